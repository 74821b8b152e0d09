"""Builds from request to report: planning them, queueing their jobs, giving attempts to
workers, and ending them.

The build and its jobs are committed to the store first, then one message per job goes to the
queue of its architecture. A message that cannot be sent (the broker is down) leaves its job
marked not-enqueued; `enqueue_pending` sends it later, so an accepted build is never lost.

Build order, the one rule: a package of a build set waits for every other package of the set
that any alternative of its build dependencies names (the build environment's relation syntax,
read by python-debian), so it never builds against a stale version. Its job for an
architecture waits for the other's jobs of the same architecture and of ``all`` (or all of
them, when it has neither).

`tick` is the master's housekeeping, run every few seconds by `master serve`:
- an attempt whose lease ran out (its worker died or was cut off) is queued again as a new
  attempt, or fails when it was a local build; the old attempt's uploads and reports are
  refused from then on;
- if the broker lost its data (a marker key the master keeps there is gone), every queued job
  gets a new attempt number and is sent again, so its old message, should it exist, is stale;
- a queued job whose message left the broker without a claim (a worker consumed it and
  never claimed, or the broker lost it) is sent again as a new attempt, at most
  `lost_message_bound` seconds (34 s) after the message left;
- whatever has not reached the broker is sent (but for the jobs of a paused queue);
- workers whose heartbeats stopped are recorded offline, and events older than
  ``master.events_window`` are forgotten.

A drained worker, or a paused queue, is enforced at the claim: the claim is refused as stale
and the job's message is sent again (as a new attempt) when it may run, so the message that
was taken goes back to the farm rather than to the drained worker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from celery import Celery

from common import arch as archmod
from common import formats as common_formats
from common.config import Settings
from common.definition import MAX_NAME, MAX_VERSION, find_definition, snapshot
from common.errors import (
    BadRequest,
    Conflict,
    DefinitionError,
    Forbidden,
    NotFound,
    PkgfarmError,
    ProtocolMismatch,
    Unprocessable,
)
from common.locks import LockBusy, file_lock
from common.messages import (
    PROTOCOL_VERSION,
    BuildTask,
    JobAssignment,
    JobReport,
)
from common.queues import BUILD_TASK
from common.states import RESTARTABLE, JobState, ReportStatus, SourceKind
from master import buildlogs
from master import formats as repo_formats
from master.repository import Repository
from master.store import Job, PlannedJob, Store

log = logging.getLogger(__name__)

#: The key the master keeps in the broker's Redis; its absence means the data was lost.
BROKER_MARKER = "pkgfarm:broker-marker"
#: The longest error text kept with a failed job.
MAX_ERROR = 4000
#: How often, and how long after it was sent, the master looks for a job's message in the
#: broker; a message missing at two looks in a row is taken for lost and its job sent again
#: (`find_lost_messages`; the bound is `lost_message_bound`).
LOST_CHECK_INTERVAL = 10.0
LOST_GRACE = 10.0


def lost_message_bound(tick: float) -> float:
    """The longest time, from the moment a message leaves the broker without a claim (a
    worker consumed it and never claimed, or the broker lost it), until the master sends its
    job again, when `Scheduler.tick` runs every ``tick`` seconds (`master serve`: every
    ``master.cli.HOUSEKEEPING_INTERVAL`` seconds after the previous tick ended).

    The looks come at the first tick at least LOST_CHECK_INTERVAL after the one before, so
    one look follows another within INTERVAL + tick. The first look that can see the message
    missing comes within that of the later of the message's leaving and GRACE after its
    sending; the second confirms it one spacing later, and the same tick sends the job again.
    So: GRACE + 2 * (INTERVAL + tick), 34 s with the defaults, plus what those ticks take."""
    return LOST_GRACE + 2 * (LOST_CHECK_INTERVAL + tick)


def task_id(job_id: int, attempt: int) -> str:
    """The id of the message of one attempt (so the master can find it in the broker)."""
    return f"pkgfarm-job-{job_id}-{attempt}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_protocol(protocol: int) -> None:
    if protocol != PROTOCOL_VERSION:
        older = "older" if protocol < PROTOCOL_VERSION else "newer"
        raise ProtocolMismatch(
            f"this worker speaks version {protocol} of the master-worker protocol, which is "
            f"{older} than this master's version {PROTOCOL_VERSION}: run the same pkgfarm "
            "release on master and workers", protocol=PROTOCOL_VERSION)


@dataclass(frozen=True)
class Buildable:
    """One package of a build set: what it is, where it builds, what it makes and needs."""

    name: str
    #: the formats it is made in, each with its version in that format
    versions: tuple[tuple[str, str], ...]
    arches: tuple[str, ...]
    snapshot: bytes
    provides: frozenset[str]
    needs: frozenset[str]
    source_kind: SourceKind = SourceKind.DEFINITION
    #: what the requester should know about the plan (formats it is not made in)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Submitted:
    build_id: int
    jobs: list[tuple[int, str, str, str, str]]  # job id, package, version, arch, format
    notes: tuple[str, ...] = ()


class Scheduler:
    def __init__(self, settings: Settings, store: Store, celery: Celery,
                 repository: Repository) -> None:
        self.settings = settings
        self.store = store
        self.celery = celery
        self.repository = repository
        self.lock_path = Path(settings.master.data_dir) / "enqueue.lock"
        self._last_lost_check = 0.0
        self._suspects: set[tuple[int, int]] = set()

    # -- planning ------------------------------------------------------------------------------

    def plan_one(self, name: str, arch: str | None) -> Buildable:
        """What building ``name`` means: a YAML definition, else a source package of a
        format's own kind (`common.formats.resolve_source`)."""
        served = self.settings.repository.architectures
        requested = None if arch == archmod.ALL else arch
        try:
            definition = find_definition(name, self.settings.package_paths)
        except NotFound as missing:
            return self._plan_source(name, requested, missing)
        arches = definition.build_arches(served, requested)
        arches = [a for a in arches if a == archmod.ALL or a in served]
        if not arches:
            raise DefinitionError(
                f"{name} builds only for {', '.join(definition.architecture)}, which this "
                f"repository does not serve ({', '.join(served)})", package=name)
        served_formats = self.settings.repository.formats
        made = definition.build_formats(served_formats)
        if not made:
            raise DefinitionError(
                f"{name} is made only as {', '.join(definition.formats or ())}, which this "
                f"repository does not serve ({', '.join(served_formats)})",
                package=name, field="package.formats")
        versions = []
        for fmt_name in made:
            fmt = common_formats.get(fmt_name)
            try:
                definition.check_format(fmt)
            except DefinitionError as exc:
                exc.details.setdefault("package", name)
                raise
            versions.append((fmt_name, fmt.full_version(definition.version, definition.release)))
        return Buildable(
            name=name, versions=tuple(versions),
            arches=tuple(arches), snapshot=snapshot(definition),
            provides=frozenset({definition.name}),
            needs=frozenset(common_formats.build_host().relation_names(
                definition.build_depends)))

    def _plan_source(self, ref: str, requested: str | None, missing: NotFound) -> Buildable:
        try:
            found = common_formats.resolve_source(
                ref, self.settings, Path(self.settings.master.data_dir),
                self.settings.repository.architectures, requested)
        except NotFound as none:
            raise NotFound(f"{missing.message}; and {none.message}", package=ref) from None
        if found is None:
            raise missing
        fmt, plan = found
        what = fmt.source_kinds[plan.kind]
        if not plan.arches:
            raise DefinitionError(f"{plan.name} builds for no architecture this repository "
                                  "serves", package=ref)
        served_formats = self.settings.repository.formats
        if fmt.name not in served_formats:
            raise DefinitionError(f"{plan.name} is a {what}, made as {fmt.name}, which this "
                                  f"repository does not serve ({', '.join(served_formats)})",
                                  package=ref)
        others = [f for f in served_formats if f != fmt.name]
        notes = ((f"{plan.name} is a {what}: it is built as {fmt.name} only, "
                  f"not as {', '.join(others)}",) if others else ())
        return Buildable(name=plan.name, versions=((fmt.name, plan.version),),
                         arches=plan.arches, snapshot=plan.snapshot, provides=plan.provides,
                         needs=plan.needs, source_kind=plan.kind, notes=notes)

    def plan(self, packages: list[str], arch: str | None) -> tuple[list[Buildable],
                                                                    list[PlannedJob]]:
        """Every job of a build set, each waiting for the in-set packages it needs (see the
        module's text); a cycle is refused, naming the packages in it."""
        buildables = [self.plan_one(name, arch) for name in packages]
        by_binary = {binary: b.name for b in buildables for binary in b.provides}
        graph = {b.name: {by_binary[n] for n in b.needs if n in by_binary} - {b.name}
                 for b in buildables}
        try:
            order = list(TopologicalSorter(graph).static_order())
        except CycleError as exc:
            cycle = exc.args[1]
            raise Unprocessable(
                f"the packages depend on each other in a cycle: {' -> '.join(cycle)}",
                cycle=cycle) from None
        by_name = {b.name: b for b in buildables}
        jobs: list[PlannedJob] = []
        # per package: (job index, arch, format) of its jobs
        index: dict[str, list[tuple[int, str, str]]] = {}
        host = common_formats.BUILD_HOST
        for name in order:
            b = by_name[name]
            for fmt_name, version in b.versions:
                for job_arch in b.arches:
                    deps: list[int] = []
                    for needed in sorted(graph[name]):
                        # Build environments install build dependencies in the build host's
                        # format: wait for those jobs where the set makes them.
                        planned = index[needed]
                        wanted = host if any(f == host for _, _, f in planned) else fmt_name
                        theirs = [(i, a) for i, a, f in planned if f == wanted] or [
                            (i, a) for i, a, _ in planned]
                        same = [i for i, a in theirs if a in (job_arch, archmod.ALL)]
                        deps.extend(same or [i for i, _ in theirs])
                    index.setdefault(name, []).append((len(jobs), job_arch, fmt_name))
                    jobs.append(PlannedJob(b.name, version, job_arch, b.snapshot, tuple(deps),
                                           format=fmt_name, source_kind=b.source_kind))
        return buildables, jobs

    def submit(self, packages: list[str], arch: str | None = None,
               requested_by: str | None = None) -> Submitted:
        """Validate every package, record the build, then queue the jobs that may start."""
        if not packages:
            raise BadRequest("packages must name at least one package", field="packages")
        if len(set(packages)) != len(packages):
            raise BadRequest("packages lists a name twice", field="packages")
        if arch is not None and arch != archmod.ALL and not archmod.is_known(arch):
            raise BadRequest(f"unknown architecture {arch!r}", field="arch")
        served = self.settings.repository.architectures
        if arch is not None and arch != archmod.ALL and arch not in served:
            raise BadRequest(f"this repository does not serve {arch} (it serves "
                             f"{', '.join(served)})", field="arch")
        buildables, planned = self.plan(packages, arch)
        build_id, job_ids = self.store.jobs.create_build(list(packages), arch, requested_by,
                                                         planned)
        jobs = [(job_id, p.package, p.version, p.arch, p.format)
                for job_id, p in zip(job_ids, planned, strict=True)]
        self.enqueue_pending()
        return Submitted(build_id, jobs, tuple(n for b in buildables for n in b.notes))

    def restart(self, build_id: int) -> list[int]:
        """Queue again the failed, dep-failed and cancelled jobs of a build, as they are now."""
        found = self.store.jobs.get_build(build_id)
        if found is None:
            raise NotFound(f"no build {build_id}", build=build_id)
        _, jobs = found
        retry = sorted({j.package for j in jobs if j.state in RESTARTABLE and not j.local})
        snapshots = {}
        for name in retry:
            b = self.plan_one(name, None)
            for fmt_name, version in b.versions:
                snapshots[(name, fmt_name)] = (version, b.snapshot)
        restarted = self.store.jobs.restart(build_id, snapshots)
        self.enqueue_pending()
        return restarted

    def cancel(self, build_id: int) -> list[Job]:
        """Cancel what has not ended; a running attempt learns it at its next lease renewal
        and stops its build."""
        if self.store.jobs.get_build(build_id) is None:
            raise NotFound(f"no build {build_id}", build=build_id)
        cancelled = self.store.jobs.cancel_build(build_id)
        for job in cancelled:
            self.repository.discard_staged(job.id)
        return cancelled

    # -- attempts ------------------------------------------------------------------------------

    def assignment(self, job: Job, token: str, base_url: str) -> JobAssignment:
        host = repo_formats.build_host()
        return JobAssignment(
            job_id=job.id, attempt=job.attempt, build_id=job.build_id, package=job.package,
            version=job.version, arch=job.arch, token=token,
            snapshot_b64=base64.b64encode(self.store.jobs.snapshot(job.id)).decode(),
            lease_seconds=float(self.settings.master.lease_seconds),
            build_sources=tuple(host.build_sources(base_url, self.settings)),
            format=job.format, source_kind=job.source_kind.value)

    def claim(self, job_id: int, attempt: int, worker: str, user: str | None,
              protocol: int, base_url: str) -> JobAssignment:
        """Give an attempt to a worker: its assignment with a fresh token, or 409 (stale)."""
        check_protocol(protocol)
        job = self.store.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}", job=job_id)
        held = self._held_back(job, worker)
        if held is not None:
            # The message goes back to the farm: the job keeps its place in the store, its
            # message is sent again (as a new attempt) when it may run, and this one is stale.
            self.store.jobs.resend(job_id, attempt, reason="held")
            raise Conflict(f"attempt {attempt} of job {job_id} is not given out: {held}",
                           state=job.state.value, stale=True)
        token = secrets.token_urlsafe(32)
        if not self.store.jobs.claim(job_id, attempt, worker, user, token_hash(token),
                                     self.settings.master.lease_seconds):
            raise Conflict(f"attempt {attempt} of job {job_id} is stale (the job is "
                           f"{job.state.value}, attempt {job.attempt})", state=job.state.value,
                           stale=True)
        claimed = self.store.jobs.get(job_id)
        assert claimed is not None
        buildlogs.start(self.settings.master.data_dir, claimed)
        return self.assignment(claimed, token, base_url)

    def _held_back(self, job: Job, worker: str) -> str | None:
        """Why a queued job may not go to ``worker`` now (a drained worker, a paused
        queue), or None."""
        if job.state != JobState.QUEUED:
            return None
        if self.store.workers.is_drained(worker):
            return f"worker {worker} is drained"
        queue = archmod.queue_for(job.arch)
        if self.store.queues.is_paused(queue):
            return f"queue {queue} is paused"
        return None

    def create_local_job(self, package: str, version: str, arch: str, fmt_name: str,
                         source_kind: str, worker: str, user: str | None, protocol: int,
                         base_url: str) -> JobAssignment:
        """Record a build a worker runs itself (``worker package-add --now``)."""
        check_protocol(protocol)
        try:
            fmt = common_formats.get(fmt_name)
        except PkgfarmError as exc:
            raise BadRequest(exc.message, field="format") from None
        for field, value, limit in (("package", package, MAX_NAME),
                                    ("version", version, MAX_VERSION)):
            if len(value) > limit:
                raise BadRequest(f"{field} is longer than {limit} characters", field=field)
        problem = fmt.check_name(package)
        if problem:
            raise BadRequest(problem, field="package")
        problem = fmt.check_version(version)
        if problem:
            raise BadRequest(problem, field="version")
        served = self.settings.repository.architectures
        if arch != archmod.ALL and arch not in served:
            raise BadRequest(f"this repository does not serve {arch!r} (it serves "
                             f"{', '.join(served)} and all)", field="arch")
        try:
            kind = SourceKind(source_kind)
        except ValueError:
            raise BadRequest(f"unknown source kind {source_kind!r}", field="source_kind") from None
        offered = [SourceKind.DEFINITION, *fmt.source_kinds]
        if kind not in offered:
            raise BadRequest(f"{fmt.name} is built from {' or '.join(offered)}, not from "
                             f"{kind.value}", field="source_kind")
        token = secrets.token_urlsafe(32)
        job = self.store.jobs.create_local_job(package, version, arch, fmt.name, kind, worker,
                                               user, token_hash(token),
                                               self.settings.master.lease_seconds)
        buildlogs.start(self.settings.master.data_dir, job)
        return self.assignment(job, token, base_url)

    def live_attempt(self, job_id: int, attempt: int, token: str, user: str | None,
                     also: tuple[JobState, ...] = ()) -> Job:
        """The job, if the caller holds its current, running attempt (409/403 otherwise).

        The attempt must be the job's current one and still running (else 409: finished,
        re-queued, or never given out), the token must be the one issued at its claim and the
        caller must be the user who claimed it (else 403).
        """
        job = self.store.jobs.get(job_id)
        if job is None:
            raise Forbidden(f"job {job_id} was never given to anyone", job=job_id)
        running = job.state == JobState.BUILDING or job.state in also
        if job.attempt != attempt or not running or job.token_hash is None:
            raise Conflict(f"attempt {attempt} of job {job_id} is not running (the job is "
                           f"{job.state.value}, attempt {job.attempt})", state=job.state.value)
        if not hmac.compare_digest(token_hash(token), job.token_hash):
            raise Forbidden("the token does not belong to this attempt")
        if job.claimed_by is not None and job.claimed_by != user:
            raise Forbidden("this attempt was given to another user")
        return job

    def renew_lease(self, job: Job, attempt: int) -> None:
        if not self.store.jobs.renew_lease(job.id, attempt, self.settings.master.lease_seconds):
            raise Conflict(f"attempt {attempt} of job {job.id} is no longer running")

    def report(self, job: Job, report: JobReport, user: str | None) -> JobState:
        """A worker's final word on its attempt: publish what it made (all or nothing), or
        record its failure; then queue what waited for it."""
        try:
            status = ReportStatus(report.status)
        except ValueError:
            raise BadRequest("status must be success or failed", field="status") from None
        files: list[str] = []
        if status == ReportStatus.SUCCESS:
            manifest = {name: str(report.sha256.get(name, "")) for name in report.files}
            try:
                files = self.repository.publish_job(job, manifest, user)
            except PkgfarmError as exc:
                # The set is refused whole; the attempt ends failed with the reason.
                self.store.jobs.finish(job.id, report.attempt, JobState.FAILED,
                                       f"publication refused: {exc.message}", [])
                self.repository.discard_staged(job.id)
                raise
            state, error = JobState.SUCCESS, None
        else:
            state, error = JobState.FAILED, (report.error or "the build failed")[:MAX_ERROR]
            self.repository.discard_staged(job.id)
        if not self.store.jobs.finish(job.id, report.attempt, state, error, files):
            raise Conflict(f"attempt {report.attempt} of job {job.id} is no longer running")
        self.enqueue_pending()  # jobs that waited for this one may start now
        return state

    # -- the queue -----------------------------------------------------------------------------

    def enqueue(self, job_id: int, attempt: int, arch: str) -> bool:
        """Send one attempt's message, then mark it sent (a crash in between sends it twice,
        which the claim makes harmless; the other order could lose it)."""
        try:
            self.celery.send_task(BUILD_TASK, kwargs=BuildTask(job_id, attempt).to_json(),
                                  queue=archmod.queue_for(arch),
                                  task_id=task_id(job_id, attempt))
        except Exception as exc:  # the broker is unreachable; the job waits in the store
            log.warning("could not queue job %d (attempt %d): %s", job_id, attempt, exc)
            return False
        self.store.jobs.mark_enqueued(job_id, attempt)
        return True

    def enqueue_pending(self) -> int:
        """Queue every job whose message never reached the broker; returns how many were sent.

        Submissions, reports, resumes and the arbiter's housekeeping loop call this;
        one sender at a time (a file lock) keeps them from sending the same job twice. A
        caller that finds the lock taken returns: the sender at work, or the next housekeeping
        tick, sends what it would have.
        """
        try:
            with file_lock(self.lock_path, wait=False):
                sent = 0
                while True:  # again, for jobs recorded while this batch was being sent
                    held = self.held_queues()
                    jobs = [j for j in self.store.jobs.to_enqueue()
                            if archmod.queue_for(j.arch) not in held]
                    batch = sum(self.enqueue(job.id, job.attempt, job.arch) for job in jobs)
                    sent += batch
                    if batch < len(jobs) or not jobs:  # done, or the broker is away
                        return sent
        except LockBusy:
            return 0

    def set_drained(self, worker: str, drained: bool) -> bool:
        """Drain ``worker`` (it finishes what it builds and is given nothing new) or take it
        back; False if it already was so. Jobs held for want of an undrained worker go as soon
        as it is back. NotFound for a worker that never sent a heartbeat."""
        if self.store.workers.get(worker) is None:
            raise NotFound(f"no worker {worker!r} has ever sent a heartbeat", worker=worker)
        changed = self.store.workers.set_drained(worker, drained)
        if not drained:
            self.enqueue_pending()
        return changed

    def set_paused(self, queue: str, paused: bool) -> bool:
        """Pause ``queue`` (its jobs stay queued) or resume it, sending what waited; False if
        it already was so. NotFound for a name that is no build queue."""
        arch = queue.removeprefix("build.")
        if not queue.startswith("build.") or not (arch == archmod.ALL
                                                  or archmod.is_known(arch)):
            raise NotFound(f"no build queue {queue!r} (queues are build.<architecture> and "
                           "build.all)", queue=queue)
        changed = self.store.queues.set_paused(queue, paused)
        if not paused:
            self.enqueue_pending()
        return changed

    def held_queues(self) -> set[str]:
        """The queues whose messages are not sent now: the paused ones, and those that only
        drained workers consume (a message there would only be refused at its claim and sent
        again, over and over; it waits in the store for a worker that may take it)."""
        held = self.store.queues.paused()
        drained = self.store.workers.drained()
        if drained:
            consumers: dict[str, list[str]] = {}
            for w in self.store.workers.live(self.settings.master.worker_ttl):
                for queue in w.info.queues:
                    consumers.setdefault(queue, []).append(w.name)
            held |= {q for q, names in consumers.items() if all(n in drained for n in names)}
        return held

    def requeue_expired(self) -> int:
        expired = self.store.jobs.requeue_expired()
        for job in expired:
            if job.local:
                log.warning("local job %d (%s %s) on %s lost its lease; it failed", job.id,
                            job.package, job.arch, job.worker)
            else:
                log.warning("job %d (%s %s) lost its lease on %s; queued again as attempt %d",
                            job.id, job.package, job.arch, job.worker, job.attempt + 1)
        return len(expired)

    def check_broker(self) -> bool:
        """Re-send every queued job if the broker lost its data; True if it had."""
        try:
            with self.celery.connection_for_write() as conn:
                client = conn.default_channel.client
                if client.get(BROKER_MARKER) is not None:
                    return False
                lost = self.store.jobs.requeue_all_queued()
                client.set(BROKER_MARKER, uuid.uuid4().hex)
        except AttributeError:
            return False  # not a Redis broker: nothing to check
        except Exception as exc:
            log.debug("broker check skipped: %s", exc)
            return False
        if lost:
            log.warning("the broker holds no marker (new or emptied Redis): %d queued job(s) "
                        "will be sent again", lost)
        return True

    def queue_lengths(self) -> dict[str, int] | None:
        """Each build queue's length in the broker: every served architecture's and
        ``build.all``'s (0 when empty), and every other ``build.*`` list Redis holds; None
        when the broker cannot be read (it is away, or is not Redis).

        The one reading of the queues' lengths: the API, the dashboard, its samples and the
        metrics all come here."""
        lengths = {archmod.queue_for(a): 0
                   for a in [*self.settings.repository.architectures, archmod.ALL]}
        try:
            with self.celery.connection_for_read() as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
                client = conn.default_channel.client
                for key in client.scan_iter(match="build.*", count=1000):
                    if client.type(key) not in (b"list", "list"):
                        continue
                    name = key.decode() if isinstance(key, bytes) else str(key)
                    # kombu keeps a queue's priority levels in keys "<queue>\x06\x16<level>"
                    queue = name.split("\x06\x16", 1)[0]
                    lengths[queue] = lengths.get(queue, 0) + int(client.llen(key))
        except AttributeError:
            return None  # not a Redis broker
        except Exception as exc:  # the broker is away
            log.debug("queue lengths not read: %s", exc)
            return None
        return lengths

    def queues(self) -> list[tuple[str, int | None, bool]]:
        """Every build queue: the served architectures' and ``build.all``, those the broker
        holds and those paused; with its length in the broker (None if it cannot be read) and
        whether it is paused."""
        paused = self.store.queues.paused()
        lengths = self.queue_lengths()
        names = {archmod.queue_for(a) for a in self.settings.repository.architectures}
        names |= {archmod.queue_for(archmod.ALL)} | paused | set(lengths or {})
        return [(name, lengths.get(name, 0) if lengths is not None else None, name in paused)
                for name in sorted(names)]

    def _message_ids(self) -> set[str] | None:
        """The ids of every build message the broker holds, waiting or being worked on
        (Redis: the ``build.*`` lists and the transport's unacknowledged set); None when the
        broker cannot be read."""
        try:
            with self.celery.connection_for_read() as conn:
                channel = conn.default_channel
                client = channel.client
                payloads: list[bytes] = []
                for key in client.scan_iter(match="build.*", count=1000):
                    if client.type(key) in (b"list", "list"):
                        payloads.extend(client.lrange(key, 0, -1))
                for raw in client.hvals(getattr(channel, "unacked_key", "unacked")):
                    message = json.loads(raw)
                    payloads.append(json.dumps(message[0]).encode())
        except AttributeError:
            return None  # not a Redis broker
        except Exception as exc:
            log.debug("broker messages not read: %s", exc)
            return None
        ids = set()
        for payload in payloads:
            try:
                ids.add(str(json.loads(payload)["headers"]["id"]))
            except (ValueError, KeyError, TypeError):
                continue
        return ids

    def find_lost_messages(self, now: float | None = None) -> int:
        """Send again the queued jobs whose message is in the broker no more (see
        LOST_CHECK_INTERVAL); returns how many."""
        now = time.time() if now is None else now
        if now - self._last_lost_check < LOST_CHECK_INTERVAL:
            return 0
        self._last_lost_check = now
        waiting = self.store.jobs.waiting_in_broker(now - LOST_GRACE)
        if not waiting:
            self._suspects = set()
            return 0
        present = self._message_ids()
        if present is None:
            return 0
        missing = {(j.id, j.attempt) for j in waiting if task_id(j.id, j.attempt) not in present}
        confirmed, self._suspects = missing & self._suspects, missing - self._suspects
        resent = 0
        for job_id, attempt in sorted(confirmed):
            if self.store.jobs.resend(job_id, attempt):
                log.warning("the message of job %d attempt %d is no longer in the broker (lost, "
                            "or consumed without a claim); sending it again as attempt %d",
                            job_id, attempt, attempt + 1)
                resent += 1
        return resent

    def housekeep_events(self) -> None:
        """Note workers whose heartbeats stopped (worker.offline), and forget those silent for
        a day (their names are free again); forget the events older than
        master.events_window (an indexed delete: cheap when there is nothing to do)."""
        self.store.workers.expire(self.settings.master.worker_ttl)
        self.store.workers.forget_silent()
        pruned = self.store.events.prune(self.settings.master.events_window)
        if pruned:
            log.info("forgot %d event(s) older than %d s", pruned,
                     self.settings.master.events_window)

    def tick(self) -> None:
        self.requeue_expired()
        self.housekeep_events()
        self.check_broker()
        self.find_lost_messages()
        sent = self.enqueue_pending()
        if sent:
            log.info("queued %d job(s)", sent)

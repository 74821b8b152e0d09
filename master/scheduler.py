"""Turning a build request into recorded jobs and queued messages, and keeping them moving.

The build and its jobs are committed to the store first, then one message per job goes to the
queue of its architecture. A message that cannot be sent (the broker is down) leaves its job
marked not-enqueued; `enqueue_pending` sends it later, so an accepted build is never lost.

`tick` is the master's housekeeping, run every few seconds by `master serve`:
- an attempt whose lease ran out (its worker died or was cut off) is queued again as a new
  attempt; the old attempt's uploads and reports are refused from then on;
- if the broker lost its data (a marker key the master keeps there is gone), every queued job
  gets a new attempt number and is sent again, so its old message, should it exist, is stale;
- whatever has not reached the broker is sent.
"""

from __future__ import annotations

import fcntl
import logging
import uuid
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from celery import Celery

from common import arch as archmod
from common import debresolve
from common.config import Settings
from common.debsource import snapshot_debian_source
from common.definition import find_definition, snapshot
from common.errors import BadRequest, DefinitionError, NotFound, Unprocessable
from common.messages import BuildTask
from common.queues import BUILD_TASK
from common.states import JobState
from master.store import PlannedJob, Store

log = logging.getLogger(__name__)

#: The key the master keeps in the broker's Redis; its absence means the data was lost.
BROKER_MARKER = "pkgfarm:broker-marker"


RESTARTABLE = frozenset({JobState.FAILED, JobState.DEP_FAILED, JobState.CANCELLED})


def relation_names(relations: tuple[str, ...] | list[str]) -> list[str]:
    """The package names a list of relations mentions (every alternative)."""
    return [alt.strip().split()[0].split(":")[0].split("(")[0]
            for relation in relations for alt in relation.split("|") if alt.strip()]


@dataclass(frozen=True)
class Buildable:
    """One package of a build set: what it is, where it builds, what it makes and needs."""

    name: str
    version: str
    arches: tuple[str, ...]
    snapshot: bytes
    provides: frozenset[str]
    needs: frozenset[str]


@dataclass(frozen=True)
class Submitted:
    build_id: int
    jobs: list[tuple[int, str, str, str]]  # job id, package, version, arch


class Scheduler:
    def __init__(self, settings: Settings, store: Store, celery: Celery) -> None:
        self.settings = settings
        self.store = store
        self.celery = celery
        self.lock_path = Path(settings.master.data_dir) / "enqueue.lock"

    def plan_one(self, name: str, arch: str | None) -> Buildable:
        """What building ``name`` means: a YAML definition, else a Debian source package."""
        served = self.settings.repository.architectures
        requested = None if arch == archmod.ALL else arch
        try:
            definition = find_definition(name, self.settings.package_paths)
        except NotFound as missing:
            return self._plan_debian_source(name, requested, missing)
        arches = definition.build_arches(served, requested)
        arches = [a for a in arches if a == archmod.ALL or a in served]
        if not arches:
            raise DefinitionError(
                f"{name} builds only for {', '.join(definition.architecture)}, which this "
                f"repository does not serve ({', '.join(served)})", package=name)
        return Buildable(
            name=name, version=definition.full_version, arches=tuple(arches),
            snapshot=snapshot(definition), provides=frozenset({definition.name}),
            needs=frozenset(relation_names(definition.build_depends)),
        )

    def _plan_debian_source(self, ref: str, requested: str | None,
                            missing: NotFound) -> Buildable:
        served = self.settings.repository.architectures
        state_dir = Path(self.settings.master.data_dir) / "apt"
        try:
            source, files = debresolve.resolve_with_files(ref, self.settings, state_dir)
        except NotFound:
            raise NotFound(f"{missing.message}; and no Debian source package named {ref!r}",
                           package=ref) from None
        arches = source.build_arches(list(served), requested)
        if not arches:
            raise DefinitionError(f"{source.name} builds for {' '.join(source.architecture)}, "
                                  f"which this repository does not serve", package=ref)
        return Buildable(
            name=source.name, version=source.version, arches=tuple(arches),
            snapshot=snapshot_debian_source(source, files),
            provides=frozenset(b for b, _ in source.binaries),
            needs=frozenset(source.build_depends),
        )

    def plan(self, packages: list[str], arch: str | None) -> tuple[list[Buildable],
                                                                    list[PlannedJob]]:
        """Every job of a build set, each waiting for the in-set packages it needs.

        A package needs another of the set when one of its build dependencies is a binary the
        other makes. Its job for an architecture waits for the other's jobs of the same
        architecture and of ``all`` (or all of them, when it has neither). A cycle is refused,
        naming the packages in it.
        """
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
        index: dict[str, list[tuple[int, str]]] = {}
        for name in order:
            b = by_name[name]
            for job_arch in b.arches:
                deps: list[int] = []
                for needed in sorted(graph[name]):
                    theirs = index[needed]
                    same = [i for i, a in theirs if a in (job_arch, archmod.ALL)]
                    deps.extend(same or [i for i, _ in theirs])
                index.setdefault(name, []).append((len(jobs), job_arch))
                jobs.append(PlannedJob(b.name, b.version, job_arch, b.snapshot, tuple(deps)))
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
        _, planned = self.plan(packages, arch)
        build_id, job_ids = self.store.create_build(list(packages), arch, requested_by, planned)
        jobs = [(job_id, p.package, p.version, p.arch)
                for job_id, p in zip(job_ids, planned, strict=True)]
        self.enqueue_pending()
        return Submitted(build_id, jobs)

    def restart(self, build_id: int) -> list[int]:
        """Queue again the failed, dep-failed and cancelled jobs of a build, as they are now."""
        found = self.store.get_build(build_id)
        if found is None:
            raise NotFound(f"no build {build_id}", build=build_id)
        _, jobs = found
        retry = sorted({j.package for j in jobs if j.state in RESTARTABLE})
        snapshots = {}
        for name in retry:
            b = self.plan_one(name, None)
            snapshots[name] = (b.version, b.snapshot)
        restarted = self.store.restart_jobs(build_id, snapshots)
        self.enqueue_pending()
        return restarted

    def enqueue(self, job_id: int, attempt: int, arch: str) -> bool:
        """Send one attempt's message, then mark it sent (a crash in between sends it twice,
        which the claim makes harmless; the other order could lose it)."""
        try:
            self.celery.send_task(BUILD_TASK, kwargs=BuildTask(job_id, attempt).to_json(),
                                  queue=archmod.queue_for(arch))
        except Exception as exc:  # the broker is unreachable; the job waits in the store
            log.warning("could not queue job %d (attempt %d): %s", job_id, attempt, exc)
            return False
        self.store.mark_enqueued(job_id, attempt)
        return True

    def enqueue_pending(self) -> int:
        """Queue every job whose message never reached the broker; returns how many were sent.

        Submissions, reports and the housekeeping thread of every master process call this;
        one sender at a time (a file lock) keeps them from sending the same job twice. A
        caller that finds the lock taken returns: the sender at work, or the next housekeeping
        tick, sends what it would have.
        """
        with open(self.lock_path, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            sent = 0
            while True:  # again, for jobs recorded while this batch was being sent
                jobs = self.store.jobs_to_enqueue()
                batch = sum(self.enqueue(job.id, job.attempt, job.arch) for job in jobs)
                sent += batch
                if batch < len(jobs) or not jobs:  # done, or the broker is away
                    return sent

    def requeue_expired(self) -> int:
        expired = self.store.requeue_expired()
        for job in expired:
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
                lost = self.store.requeue_all_queued()
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

    def tick(self) -> None:
        self.requeue_expired()
        self.check_broker()
        sent = self.enqueue_pending()
        if sent:
            log.info("queued %d job(s)", sent)

"""The build task: a thin Celery shell around `run_job`, a plain function.

`run_job` claims the attempt from the master (a stale or duplicate message is dropped there)
and hands it to `execute_attempt`, which `worker package-add --now` uses too: build in a fresh
directory while a thread renews the attempt's lease, upload each archive with the attempt's
token, send the log, report the outcome. A failed build is always reported as failed with its
log. If the master takes the attempt away (the lease ran out, the build was re-queued
elsewhere), the build is stopped and nothing more is sent for it.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import tempfile
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, NamedTuple

from celery import Celery

from common.config import Settings
from common.definition import unpack_snapshot
from common.errors import BuildCancelled, BuildFailed, Conflict, PkgfarmError
from common.messages import BuildTask, JobAssignment
from common.queues import BUILD_TASK, make_celery
from common.states import ReportStatus, SourceKind
from worker import formats
from worker.build import build_definition
from worker.client import MasterClient
from worker.environment import environment_for
from worker.environment.processes import BuildLog, remove_tree
from worker.formats import BuildResult

log = logging.getLogger(__name__)

Say = Callable[[str], None]
#: How an attempt ends on this worker without a report of its own: the master took it back
#: (LOST), or refused the claim of an old or duplicate message (STALE).
LOST, STALE = "lost", "stale"


class Outcome(NamedTuple):
    #: the ReportStatus the worker reported, or LOST
    status: str
    error: str | None
    files: list[str]


class LogStreamer(threading.Thread):
    """Sends what the build log gained to the master every few seconds, while it builds.

    The log is read through a descriptor opened once, before anything of the build runs, and
    never by its name again: whatever a build does to names, the worker sends only its log.
    """

    def __init__(self, client: MasterClient, assignment: JobAssignment, path: Path,
                 interval: float = 2.0) -> None:
        super().__init__(name=f"log-{assignment.job_id}", daemon=True)
        self.client, self.assignment = client, assignment
        self.fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.interval = interval
        self.sent = 0
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.send()
            except Conflict:
                return  # the attempt is over; the lease keeper stops the build

    def send(self) -> None:
        """Send everything not sent yet (also called once more at the end)."""
        with self.lock:
            if self.fd < 0:
                return
            chunk = os.pread(self.fd, 8 * 1024 * 1024, self.sent)
            if not chunk:
                return
            try:
                self.client.append_log(self.assignment, chunk.decode("utf-8", "replace"),
                                       retry_for=self.interval)
            except Conflict:
                raise
            except PkgfarmError as exc:
                log.warning("log of job %d not sent yet: %s", self.assignment.job_id,
                            exc.message)
                return
            self.sent += len(chunk)

    def finish(self) -> None:
        self.stopping.set()
        self.join(timeout=30)
        while True:
            before = self.sent
            self.send()
            if self.sent == before:
                return

    def close(self) -> None:
        with self.lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


class LeaseKeeper(threading.Thread):
    """Renews an attempt's lease; sets `lost` when the master says it is no longer ours."""

    def __init__(self, client: MasterClient, assignment: JobAssignment) -> None:
        super().__init__(name=f"lease-{assignment.job_id}", daemon=True)
        self.client, self.assignment = client, assignment
        self.interval = max(assignment.lease_seconds / 4, 0.5)
        self.lost = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                if not self.client.renew_lease(self.assignment, retry_for=self.interval):
                    log.warning("job %d attempt %d was taken away by the master; stopping it",
                                self.assignment.job_id, self.assignment.attempt)
                    self.lost.set()
                    return
            except PkgfarmError as exc:
                # Anything but "not yours any more" is passing: try again at the next turn.
                log.warning("lease of job %d not renewed: %s", self.assignment.job_id,
                            exc.message)
            except Exception:
                log.exception("lease of job %d not renewed", self.assignment.job_id)

    def stop(self) -> None:
        self.stopping.set()


def run_job(settings: Settings, task: BuildTask, worker_name: str,
            client: MasterClient | None = None) -> str:
    """Build one attempt of a job; returns its final status (a ReportStatus, LOST or
    STALE)."""
    client = client or MasterClient(settings.worker)
    assignment = client.claim(task.job_id, task.attempt, worker_name)
    if assignment is None:
        log.info("job %d attempt %d is stale; dropping the message", task.job_id, task.attempt)
        return STALE

    snapshot = base64.b64decode(assignment.snapshot_b64)
    return execute_attempt(settings, client, assignment, snapshot).status


def execute_attempt(settings: Settings, client: MasterClient, assignment: JobAssignment,
                    snapshot: bytes, say: Say | None = None) -> Outcome:
    """Build, upload and report one attempt the master gave this worker.

    The status is the ReportStatus reported, or LOST when the master took the attempt away.
    """
    Path(settings.worker.work_dir).mkdir(parents=True, exist_ok=True)
    # The build's folder is the worker's (mode 0700 from mkdtemp, 0711 once its area is
    # made): the log, the trees it packs and the clean root live here, where build steps
    # cannot write; they write only in its area.
    workdir = Path(tempfile.mkdtemp(prefix=f"job{assignment.job_id}-",
                                    dir=settings.worker.work_dir))
    keeper = LeaseKeeper(client, assignment)
    keeper.start()
    log_file = workdir / "build.log"
    log_file.touch(mode=0o600)
    streamer = LogStreamer(client, assignment, log_file)
    streamer.start()
    try:
        with BuildLog(log_file) as out:
            status, error, files = _build_and_upload(settings, client, assignment, snapshot,
                                                     workdir, out, keeper.lost, say)
        lost = Outcome(LOST, "the master took this attempt back", [])
        if keeper.lost.is_set():
            with contextlib.suppress(PkgfarmError):
                streamer.finish()  # a cancelled attempt's log is still kept
            return lost
        try:
            streamer.finish()
            client.report(assignment, status, error, [f for f, _ in files], dict(files))
        except Conflict as exc:
            log.warning("job %d attempt %d: %s", assignment.job_id, assignment.attempt,
                        exc.message)
            return lost
        return Outcome(status, error, [f for f, _ in files])
    finally:
        keeper.stop()
        streamer.stopping.set()
        streamer.close()
        remove_tree(workdir)


def build(settings: Settings, assignment: JobAssignment, snapshot: bytes, workdir: Path,
          out: IO[str], note: Say, cancel: threading.Event) -> BuildResult:
    """Build a job's snapshot (a YAML definition, or a source of the format's own kind) in the
    environment the worker is configured for, with the farm's own repository as a source of
    build dependencies."""
    ws = settings.worker
    fmt = formats.get(assignment.format)
    is_definition = assignment.source_kind == SourceKind.DEFINITION
    with environment_for(ws, assignment.arch, workdir, list(assignment.build_sources), out=out,
                         log=note, cancel=cancel, label_only=is_definition,
                         hidden=settings.private_paths()) as env:
        if not is_definition:
            return fmt.build_source(settings, snapshot, assignment.arch, workdir, env, out,
                                    cancel)
        definition = unpack_snapshot(snapshot, workdir / "def")
        return build_definition(definition, assignment.arch, workdir / "def", out, note,
                                timeout=ws.build_timeout, cancel=cancel, environment=env,
                                fmt=assignment.format, network_policy=ws.build_network)


def _build_and_upload(settings: Settings, client: MasterClient, assignment: JobAssignment,
                      snapshot: bytes, workdir: Path, out: IO[str],
                      lost: threading.Event, say: Say | None
                      ) -> tuple[ReportStatus, str | None, list[tuple[str, str]]]:
    """Build and upload; the files are (name, sha256) pairs for the report's manifest."""
    def note(message: str) -> None:
        out.write(f"pkgfarm: {message}\n")
        out.flush()
        (say or log.info)(message)

    note(f"job {assignment.job_id} attempt {assignment.attempt}: {assignment.package} "
         f"{assignment.version} for {assignment.arch}")
    try:
        result = build(settings, assignment, snapshot, workdir, out, note, lost)
        files = []
        for artifact in [*result.archives, *result.by_products]:
            if lost.is_set():
                raise BuildCancelled("the attempt was taken away before the upload")
            receipt = client.upload(artifact, assignment)
            note(f"uploaded {receipt.filename} ({receipt.size} bytes, sha256 "
                 f"{receipt.sha256[:12]}…)")
            files.append((receipt.filename, receipt.sha256))
    except BuildFailed as exc:
        note(f"build failed: {exc.message}")
        return ReportStatus.FAILED, exc.message, []
    except PkgfarmError as exc:
        note(f"failed: {exc.message}")
        return ReportStatus.FAILED, exc.message, []
    except Exception as exc:
        out.write(traceback.format_exc())
        note(f"worker error: {exc}")
        return ReportStatus.FAILED, f"worker error: {exc}", []
    return ReportStatus.SUCCESS, None, files


def make_worker_app(settings: Settings, worker_name: str) -> Celery:
    app = make_celery(settings, name="pkgfarm-worker")

    # Soft limit a little past the build's own limit, hard limit past that: the builder stops
    # the build's process group itself; these only catch a worker stuck outside the build.
    @app.task(name=BUILD_TASK, acks_late=True, ignore_result=True,
              soft_time_limit=settings.worker.build_timeout + 600,
              time_limit=settings.worker.build_timeout + 900)
    def build(job_id: int, attempt: int) -> str:
        return run_job(settings, BuildTask(job_id, attempt), worker_name)

    return app

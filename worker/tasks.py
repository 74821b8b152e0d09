"""The build task: a thin Celery shell around `run_job`, a plain function.

`run_job` claims the attempt from the master (a stale or duplicate message is dropped there),
builds in a fresh directory, uploads each archive with the attempt's token, sends the log, and
reports the outcome. A failed build is always reported as failed with its log.
"""

from __future__ import annotations

import base64
import logging
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import IO, Any

from celery import Celery

from common.config import Settings
from common.definition import unpack_snapshot
from common.errors import BuildFailed, PkgfarmError
from common.messages import BuildTask, JobAssignment
from common.queues import BUILD_TASK, make_celery
from worker.builder import build_definition
from worker.client import MasterClient

log = logging.getLogger(__name__)


def _logger(out: IO[str]) -> Any:
    def write(message: str) -> None:
        out.write(f"pkgfarm: {message}\n")
        out.flush()
        log.info("%s", message)
    return write


def run_job(settings: Settings, task: BuildTask, worker_name: str,
            client: MasterClient | None = None) -> str:
    """Build one attempt of a job; returns its final status (or "stale")."""
    client = client or MasterClient(settings.worker)
    assignment = client.claim(task.job_id, task.attempt, worker_name)
    if assignment is None:
        log.info("job %d attempt %d is stale; dropping the message", task.job_id, task.attempt)
        return "stale"
    Path(settings.worker.work_dir).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"job{task.job_id}-", dir=settings.worker.work_dir))
    log_file = workdir / "build.log"
    try:
        with open(log_file, "w", encoding="utf-8", errors="replace") as out:
            status, error, files = _build_and_upload(settings, client, assignment, workdir, out)
        _send_log(client, assignment, log_file)
        client.report(assignment, status, error, files)
        return status
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _build_and_upload(settings: Settings, client: MasterClient, assignment: JobAssignment,
                      workdir: Path, out: IO[str]) -> tuple[str, str | None, list[str]]:
    say = _logger(out)
    say(f"job {assignment.job_id} attempt {assignment.attempt}: {assignment.package} "
        f"{assignment.version} for {assignment.arch}")
    try:
        definition = unpack_snapshot(base64.b64decode(assignment.snapshot_b64),
                                     workdir / "def")
        result = build_definition(
            definition, assignment.arch, workdir / "def", out, say,
            timeout=settings.worker.build_timeout,
            install_deps=settings.worker.install_build_depends,
        )
        files = []
        for archive in result.archives:
            receipt = client.upload(archive, assignment)
            say(f"uploaded {receipt.filename} to {receipt.pool_path}")
            files.append(receipt.filename)
    except BuildFailed as exc:
        say(f"build failed: {exc.message}")
        return "failed", exc.message, []
    except PkgfarmError as exc:
        say(f"failed: {exc.message}")
        return "failed", exc.message, []
    except Exception as exc:
        out.write(traceback.format_exc())
        say(f"worker error: {exc}")
        return "failed", f"worker error: {exc}", []
    return "success", None, files


def _send_log(client: MasterClient, assignment: JobAssignment, log_file: Path) -> None:
    text = log_file.read_text(encoding="utf-8", errors="replace")
    try:
        client.append_log(assignment, text)
    except PkgfarmError as exc:
        log.warning("could not send the log of job %d: %s", assignment.job_id, exc.message)


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

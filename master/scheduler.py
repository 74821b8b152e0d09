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

import logging
import uuid
from dataclasses import dataclass

from celery import Celery

from common import arch as archmod
from common.config import Settings
from common.definition import find_definition, snapshot
from common.errors import BadRequest, DefinitionError
from common.messages import BuildTask
from common.queues import BUILD_TASK
from master.store import Store

log = logging.getLogger(__name__)

#: The key the master keeps in the broker's Redis; its absence means the data was lost.
BROKER_MARKER = "pkgfarm:broker-marker"


@dataclass(frozen=True)
class Submitted:
    build_id: int
    jobs: list[tuple[int, str, str, str]]  # job id, package, version, arch


class Scheduler:
    def __init__(self, settings: Settings, store: Store, celery: Celery) -> None:
        self.settings = settings
        self.store = store
        self.celery = celery

    def submit(self, packages: list[str], arch: str | None = None,
               requested_by: str | None = None) -> Submitted:
        """Validate every definition, record the build, then queue its jobs."""
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
        planned: list[tuple[str, str, str, bytes]] = []
        for name in packages:
            definition = find_definition(name, self.settings.package_paths)
            arches = definition.build_arches(served, None if arch == archmod.ALL else arch)
            arches = [a for a in arches if a == archmod.ALL or a in served]
            if not arches:
                raise DefinitionError(
                    f"{name} builds only for {', '.join(definition.architecture)}, which this "
                    f"repository does not serve ({', '.join(served)})", package=name)
            snap = snapshot(definition)
            planned.extend((name, definition.full_version, a, snap) for a in arches)
        build_id, job_ids = self.store.create_build(list(packages), arch, requested_by, planned)
        jobs = [(job_id, p[0], p[1], p[2]) for job_id, p in zip(job_ids, planned, strict=True)]
        for job_id, _, _, job_arch in jobs:
            self.enqueue(job_id, 1, job_arch)
        return Submitted(build_id, jobs)

    def enqueue(self, job_id: int, attempt: int, arch: str) -> bool:
        try:
            self.celery.send_task(BUILD_TASK, kwargs=BuildTask(job_id, attempt).to_json(),
                                  queue=archmod.queue_for(arch))
        except Exception as exc:  # the broker is unreachable; the job waits in the store
            log.warning("could not queue job %d (attempt %d): %s", job_id, attempt, exc)
            return False
        self.store.mark_enqueued(job_id, attempt)
        return True

    def enqueue_pending(self) -> int:
        """Queue every job whose message never reached the broker; returns how many were sent."""
        sent = 0
        for job in self.store.jobs_to_enqueue():
            sent += self.enqueue(job.id, job.attempt, job.arch)
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

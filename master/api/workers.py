"""Workers: their heartbeats, the list of those alive, draining them; the build queues and
pausing them."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint

from common import arch as archmod
from common.errors import BadRequest, Forbidden
from common.messages import Heartbeat
from master.api.helpers import check_name, iso, parse_message, svc
from master.auth import caller_has, current_user, require
from master.store import Job, WorkerInfo

bp = Blueprint("workers", __name__, url_prefix="/api/v1")

#: The most worker names one user (not an admin) may have live at once.
MAX_LIVE_NAMES = 64


@bp.post("/workers/heartbeat")
@require("upload")
def heartbeat() -> Any:
    beat = parse_message(Heartbeat)
    check_name(beat.name, "name")
    if not 1 <= beat.concurrency <= 1024:
        raise BadRequest("concurrency must be between 1 and 1024", field="concurrency")
    if len(beat.architectures) > 64 or len(beat.queues) > 65:
        raise BadRequest("too many architectures or queues", field="architectures")
    for a in beat.architectures:
        if not archmod.is_known(a):
            raise BadRequest(f"unknown architecture {a!r}", field="architectures")
    services = svc()
    ttl = services.settings.master.worker_ttl
    # A worker's name belongs to the user that registered it, and a user has at most
    # MAX_LIVE_NAMES live ones (admins: any name, no limit); see master.store.workers.
    refused = services.store.workers.use_name(
        beat.name, WorkerInfo(architectures=beat.architectures, concurrency=beat.concurrency,
                              queues=beat.queues, user=current_user()),
        leaving=beat.leaving, ttl=ttl, max_live=None if caller_has("admin") else MAX_LIVE_NAMES)
    if refused is not None:
        raise Forbidden(refused, field="name")
    return {"ok": True, "ttl": ttl}


#: The span of the workers' done and failed counts.
DAY = 86400.0


@bp.get("/workers")
@require("read")
def workers() -> Any:
    """The live workers: what each serves, what it builds now and since when, and the jobs it
    finished in the last 24 hours."""
    services = svc()
    building: dict[str, list[Job]] = {}
    for job in services.store.jobs.building():
        building.setdefault(job.worker or "", []).append(job)
    now = time.time()
    drained = services.store.workers.drained()
    counts = services.store.stats.worker_counts(now - DAY)
    return {"workers": [
        {
            "name": w.name,
            "architectures": list(w.info.architectures),
            "concurrency": w.info.concurrency,
            "queues": list(w.info.queues),
            "last_seen": iso(w.last_seen),
            "seconds_since_heartbeat": round(now - w.last_seen, 1),
            "drained": w.name in drained,
            "building": [{"build_id": j.build_id, "job_id": j.id, "package": j.package,
                          "version": j.version, "arch": j.arch, "format": j.format,
                          "started_at": iso(j.started_at),
                          "seconds": round(max(0.0, now - (j.started_at or now)), 1)}
                         for j in building.get(w.name, [])],
            "last_24h": {"done": counts.get(w.name, {}).get("done", 0),
                         "failed": counts.get(w.name, {}).get("failed", 0)},
        }
        for w in services.store.workers.live(services.settings.master.worker_ttl)
    ]}


@bp.post("/workers/<name>/drain")
@require("admin")
def drain(name: str) -> Any:
    """The worker finishes what it builds and is given nothing new."""
    changed = svc().scheduler.set_drained(check_name(name, "name"), True)
    return {"name": name, "drained": True, "changed": changed}


@bp.post("/workers/<name>/resume")
@require("admin")
def resume(name: str) -> Any:
    changed = svc().scheduler.set_drained(check_name(name, "name"), False)
    return {"name": name, "drained": False, "changed": changed}


@bp.get("/queues")
@require("read")
def queues() -> Any:
    return {"queues": [{"name": name, "length": length, "paused": paused}
                       for name, length, paused in svc().scheduler.queues()]}


@bp.post("/queues/<name>/pause")
@require("admin")
def pause_queue(name: str) -> Any:
    """The queue's jobs stay queued until it is resumed."""
    changed = svc().scheduler.set_paused(name, True)
    return {"name": name, "paused": True, "changed": changed}


@bp.post("/queues/<name>/resume")
@require("admin")
def resume_queue(name: str) -> Any:
    changed = svc().scheduler.set_paused(name, False)
    return {"name": name, "paused": False, "changed": changed}

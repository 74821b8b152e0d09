"""Workers: their heartbeats, and the list of those alive."""

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
    known = services.store.workers.get(beat.name)
    if known is not None and known.info.user not in (None, current_user()) and \
            not caller_has("admin"):
        # A worker's name belongs to the user that registered it.
        raise Forbidden(f"the worker name {beat.name!r} belongs to another user",
                        field="name")
    if beat.leaving:
        services.store.workers.forget(beat.name)
    else:
        services.store.workers.heartbeat(beat.name, WorkerInfo(
            architectures=beat.architectures, concurrency=beat.concurrency,
            queues=beat.queues, user=current_user()))
    return {"ok": True, "ttl": services.settings.master.worker_ttl}


@bp.get("/workers")
@require("read")
def workers() -> Any:
    services = svc()
    building: dict[str, list[Job]] = {}
    for job in services.store.jobs.building():
        building.setdefault(job.worker or "", []).append(job)
    now = time.time()
    return {"workers": [
        {
            "name": w.name,
            "architectures": list(w.info.architectures),
            "concurrency": w.info.concurrency,
            "queues": list(w.info.queues),
            "last_seen": iso(w.last_seen),
            "seconds_since_heartbeat": round(now - w.last_seen, 1),
            "building": [{"build_id": j.build_id, "job_id": j.id, "package": j.package,
                          "version": j.version, "arch": j.arch}
                         for j in building.get(w.name, [])],
        }
        for w in services.store.workers.live(services.settings.master.worker_ttl)
    ]}

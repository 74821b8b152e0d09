"""``GET /api/v1/webhooks``: each configured hook and its last deliveries (admins)."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint

from master.api.helpers import int_arg, iso, svc
from master.auth import require

bp = Blueprint("webhooks", __name__, url_prefix="/api/v1")


@bp.get("/webhooks")
@require("admin")
def list_webhooks() -> Any:
    services = svc()
    limit = int_arg("limit", 20, 1, 500)
    hooks = []
    for hook in services.settings.master.webhooks:
        deliveries = services.store.webhooks.recent(hook.name, limit)
        hooks.append({
            "name": hook.name,
            "url": hook.url,
            "events": list(hook.events),
            "counts": services.store.webhooks.counts(hook.name),
            "deliveries": [{
                "id": d.delivery,
                "event": d.kind,
                "event_id": d.event_id,
                "build_id": d.build_id,
                "state": d.state,
                "attempts": d.attempts,
                "created_at": iso(d.created_at),
                "last_try": iso(d.last_try),
                "last_status": d.last_status,
                "last_error": d.last_error,
                "next_try": iso(d.next_try) if d.state == "pending" else None,
                "delivered_at": iso(d.delivered_at),
                "body": json.loads(d.body),
            } for d in deliveries],
        })
    return {"webhooks": hooks}

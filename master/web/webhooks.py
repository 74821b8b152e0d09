"""The dashboard's webhooks page (admins): each configured hook and its last deliveries, as
``GET /api/v1/webhooks`` lists them, for a person to read."""

from __future__ import annotations

import time
from typing import Any

from flask import render_template

from master.api.helpers import int_arg, svc
from master.auth import ADMIN
from master.store.webhooks import DELIVERED, FAILED, PENDING, Delivery
from master.web import bp
from master.web.access import page

#: Deliveries shown per hook unless ``?limit=`` asks for another number.
SHOWN = 20


def last_result(d: Delivery) -> tuple[str, bool] | None:
    """What the last try of ``d`` got, and whether that was a success; None: not tried yet."""
    if d.last_status is None and not d.last_error:
        return None
    parts = [] if d.last_status is None else [f"HTTP {d.last_status}"]
    if d.last_error and d.last_error not in parts:
        parts.append(d.last_error)
    ok = d.last_status is not None and 200 <= d.last_status < 300 and not d.last_error
    return ": ".join(parts), ok


@bp.get("/webhooks")
@page(ADMIN)
def webhooks() -> Any:
    services = svc()
    limit = int_arg("limit", SHOWN, 1, 500)
    store = services.store.webhooks
    hooks = [{"hook": hook, "counts": store.counts(hook.name),
              "deliveries": store.recent(hook.name, limit)}
             for hook in services.settings.master.webhooks]
    return render_template("webhooks.html", hooks=hooks, limit=limit, now=time.time(),
                           states=(PENDING, DELIVERED, FAILED), last_result=last_result)

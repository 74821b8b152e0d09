"""``GET /metrics``: the master's Prometheus metrics, for the role or bearer token configured
under ``master.metrics`` (or for anyone, when ``public``)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from master import metrics
from master.api.helpers import svc
from master.auth import ADMIN, _authenticator

bp = Blueprint("metrics", __name__)


def _refuse(status: int) -> Any:
    message = "authentication required" if status == 401 else "permission denied"
    response = jsonify(error=message)
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="pkgfarm"'
    return response


def _allowed() -> int:
    """200 if the caller may read the metrics, else the status to refuse with."""
    services = svc()
    access = services.settings.master.metrics
    if access.public:
        return 200
    header = request.headers.get("Authorization", "")
    token = current_app.extensions.get("pkgfarm.metrics_token")
    if header[:7].lower() == "bearer ":
        return 200 if metrics.bearer_matches(header, token) else 401
    creds = request.authorization
    if creds is None or creds.type != "basic":
        return 401
    user = _authenticator().verify(creds.username or "", creds.password or "")
    if user is None:
        return 401
    roles = _authenticator().roles(user)
    return 200 if ADMIN in roles or (access.role is not None and access.role in roles) else 403


@bp.get("/metrics")
def scrape() -> Any:
    status = _allowed()
    if status != 200:
        return _refuse(status)
    return Response(metrics.render(svc()), mimetype="text/plain",
                    content_type=metrics.CONTENT_TYPE)

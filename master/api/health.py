"""``/api/v1/health`` and the API's own description."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from master.api.helpers import repo_url, svc

bp = Blueprint("health", __name__, url_prefix="/api/v1")


@bp.get("/health")
def health() -> Any:
    services = svc()
    repo = services.settings.repository
    url = repo_url()
    return {
        "status": "ok",
        "repository": {
            "url": f"{url}/",
            "suite": repo.suite,
            "component": repo.component,
            "architectures": list(repo.architectures),
            "formats": services.client_configs(url),
        },
        "broker": "ok" if services.broker_reachable() else "unreachable",
        "signing_key": (services.repository.signer.fingerprint
                        if services.repository.signer else None),
    }


@bp.get("/openapi.json")
def openapi() -> Any:
    """The OpenAPI description of this API (master/openapi.yaml), as JSON."""
    return svc().openapi()

"""The master's Flask application factory and its one error handler."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import IntegerConverter

from common.config import Settings, load_settings
from common.errors import ApiError, PkgfarmError
from master import metrics, web
from master.api import BLUEPRINTS
from master.buildlogs import MAX_LOG_BYTES
from master.services import Services

log = logging.getLogger(__name__)

#: The largest body of a JSON request (everything but uploads and logs).
MAX_JSON_BYTES = 1024 * 1024
#: The largest single piece of a build log a worker may send (it is streamed to disk).
MAX_LOG_CHUNK_BYTES = MAX_LOG_BYTES


class RecordId(IntegerConverter):
    """A positive id that fits SQLite's integers; anything larger is simply not found."""

    def __init__(self, map: Any) -> None:
        super().__init__(map, min=1, max=2**63 - 1)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    services = Services.build(settings)
    # No static folder: every route is the API's or the repository's, and each is checked.
    app = Flask("pkgfarm.master", static_folder=None)
    app.url_map.converters["id"] = RecordId
    # Werkzeug refuses a larger body with 413 before a view reads it (a little slack for forms).
    app.config["MAX_CONTENT_LENGTH"] = settings.master.max_upload_bytes + 1024 * 1024
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["pkgfarm"] = services
    app.extensions["pkgfarm.metrics_token"] = metrics.scrape_token(settings)
    # The dashboard's session cookie: signed with a key every master process shares (made
    # once, kept in the store), unreadable by scripts, not sent by cross-site subrequests.
    app.secret_key = services.store.accounts.secret("session")
    app.config.update(SESSION_COOKIE_NAME="pkgfarm_session", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_SECURE=settings.master.tls,
                      PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.master.session_hours))
    for bp in BLUEPRINTS:
        app.register_blueprint(bp)
    app.register_blueprint(web.bp)
    register_error_handlers(app)
    metrics.instrument(app)

    @app.before_request
    def limit_body() -> None:
        # Uploads are bounded by master.max_upload_bytes (MAX_CONTENT_LENGTH); every other
        # request is small, and a larger body is refused with 413 before it is read.
        if request.endpoint == "jobs.append_log":
            request.max_content_length = MAX_LOG_CHUNK_BYTES
        elif request.endpoint != "uploads.upload":
            request.max_content_length = MAX_JSON_BYTES

    return app


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(PkgfarmError)
    def project_error(exc: PkgfarmError) -> Any:
        status = exc.status if isinstance(exc, ApiError) else 500
        if status >= 500:
            log.error("%s", exc.message)
        response = jsonify(exc.to_json())
        if "retry_after" in exc.details:
            response.headers["Retry-After"] = str(exc.details["retry_after"])
        return response, status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        response = jsonify(error=exc.description or exc.name)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response, exc.code or 500

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Any:
        log.exception("unexpected error")
        return jsonify(error="internal error; the master's log has the details"), 500

"""The master's Flask application factory and its one error handler."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from common.config import Settings, load_settings
from common.errors import PkgfarmError
from master.api import create_blueprints
from master.services import Services

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    services = Services.build(settings)
    app = Flask("pkgfarm.master")
    # Werkzeug refuses a larger body with 413 before a view reads it (a little slack for forms).
    app.config["MAX_CONTENT_LENGTH"] = settings.master.max_upload_bytes + 1024 * 1024
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["pkgfarm"] = services
    for bp in create_blueprints(services):
        app.register_blueprint(bp)
    register_error_handlers(app)

    @services.auth.http.error_handler
    def auth_error(status: int) -> Any:
        message = "authentication required" if status == 401 else "permission denied"
        return jsonify(error=message), status

    return app


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(PkgfarmError)
    def project_error(exc: PkgfarmError) -> Any:
        if exc.status >= 500:
            log.error("%s", exc.message)
        return jsonify(exc.to_json()), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        return jsonify(error=exc.description or exc.name), exc.code or 500

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Any:
        log.exception("unexpected error")
        return jsonify(error="internal error; the master's log has the details"), 500

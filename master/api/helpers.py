"""What the API's views share: the master's services, request parsing, and the JSON shapes of
builds and jobs."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from flask import current_app, request, url_for

from common.errors import BadRequest
from common.states import build_state
from master.services import Services
from master.store import Build, Job


def svc() -> Services:
    """The running app's services."""
    services: Services = current_app.extensions["pkgfarm"]
    return services


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def repo_url() -> str:
    """The repository's root URL, as this request reached the master."""
    return f"{request.host_url}repo"


def json_body(allowed: set[str], required: frozenset[str] | set[str] = frozenset()
              ) -> dict[str, Any]:
    try:
        data = request.get_json(silent=True)
    except RecursionError:  # nesting deep enough to exhaust the parser
        data = None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})",
                         field=unknown[0])
    missing = sorted(required - set(data))
    if missing:
        raise BadRequest(f"field {missing[0]!r} is required", field=missing[0])
    return data


def parse_message(cls: Any) -> Any:
    """The request's JSON body as wire message ``cls``: unknown, missing or mistyped fields
    are refused with 400, naming the field."""
    allowed = {f.name for f in dataclasses.fields(cls)}
    data = json_body(allowed)
    try:
        return cls.from_json(data)
    except (ValueError, TypeError) as exc:
        raise BadRequest(str(exc)) from None


def flag_arg(name: str) -> bool:
    raw = request.args.get(name, "").lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise BadRequest(f"{name} must be true or false", field=name)


def int_arg(name: str, default: int | None = None, lo: int = 0, hi: int = 2**31) -> int:
    raw = request.args.get(name)
    if raw is None:
        if default is None:
            raise BadRequest(f"query parameter {name!r} is required", field=name)
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer", field=name) from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}", field=name)
    return value


def check_name(value: str, field: str) -> str:
    """A worker name: printable, one line, at most 200 characters."""
    if not value or len(value) > 200 or not value.isprintable():
        raise BadRequest(f"{field} must be 1 to 200 printable characters", field=field)
    return value


def check_attempt(value: int) -> int:
    if not 1 <= value <= 2**31:
        raise BadRequest("attempt must be a positive integer", field="attempt")
    return value


def job_json(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "package": job.package,
        "version": job.version,
        "arch": job.arch,
        "format": job.format,
        "status": job.state.value,
        "attempt": job.attempt,
        "worker": job.worker,
        "queued_at": iso(job.queued_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "error": job.error,
        "files": list(job.files),
        "log_url": url_for("builds.build_log", build_id=job.build_id, name=job.package,
                           arch=job.arch, format=job.format, _external=True),
    }


def build_json(build: Build, jobs: list[Job]) -> dict[str, Any]:
    return {
        "id": build.id,
        "created_at": iso(build.created_at),
        "requested_by": build.requested_by,
        "packages": list(build.packages),
        "arch": build.arch,
        "status": build_state([j.state for j in jobs]).value,
        "jobs": [job_json(j) for j in jobs],
    }

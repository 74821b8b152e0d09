"""What the repository holds: every archive, the versions of one package (with the builds
that made them and its build history), promotion between suites and removal."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from common.errors import BadRequest, NotFound
from common.states import JobState
from master import formats
from master.api.helpers import iso, json_body, svc
from master.auth import require
from master.store import Job, PackageRecord, Store

bp = Blueprint("packages", __name__, url_prefix="/api/v1")


@bp.get("/packages")
@require("read")
def packages() -> Any:
    services = svc()
    records = services.store.packages.all(request.args.get("name"))
    indexed = services.repository.in_index(records)
    return {"packages": [
        {"name": r.name, "version": r.version, "arch": r.arch, "format": r.format,
         "suite": r.suite, "component": r.component, "filename": r.filename,
         "pool_path": r.pool_path, "size": r.size, "sha256": r.sha256,
         "uploaded_at": iso(r.uploaded_at), "uploaded_by": r.uploaded_by,
         "in_index": r.id in indexed}
        for r in records
    ]}


#: How many of a package's newest jobs make its build history.
HISTORY = 50


def built_by(store: Store, records: list[PackageRecord]) -> dict[int, int]:
    """The build of each job that made one of ``records`` (job id -> build id)."""
    return store.jobs.build_ids(r.job_id for r in records if r.job_id is not None)


def success_rate(history: list[Job]) -> tuple[int, float | None]:
    """How many of ``history``'s jobs finished (succeeded or failed), and the share of them
    that succeeded (None if none finished)."""
    finished = [j for j in history if j.state in (JobState.SUCCESS, JobState.FAILED)]
    if not finished:
        return 0, None
    return len(finished), sum(j.state == JobState.SUCCESS for j in finished) / len(finished)


@bp.get("/packages/<name>")
@require("read")
def package_versions(name: str) -> Any:
    """Every version of ``name`` the pool keeps (for rollback), where each is served and which
    build made it; and the package's build history."""
    store = svc().store
    records = store.packages.all(name)
    history = store.stats.package_jobs(name, HISTORY)
    if not records and not history:
        raise NotFound(f"the farm knows no package {name}", package=name)
    builds = built_by(store, records)
    versions: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in records:
        entry = versions.setdefault((r.format, r.version, r.arch), {
            "version": r.version, "arch": r.arch, "format": r.format, "filename": r.filename,
            "pool_path": r.pool_path, "size": r.size, "sha256": r.sha256, "suites": [],
            "job_id": r.job_id, "build_id": builds.get(r.job_id) if r.job_id else None,
            "uploaded_by": r.uploaded_by, "uploaded_at": iso(r.uploaded_at)})
        entry["suites"].append(r.suite)
    ordered: list[dict[str, Any]] = []
    for fmt_name in sorted({r.format for r in records}):
        key = formats.get(fmt_name).format.version_key
        ordered += sorted((e for e in versions.values() if e["format"] == fmt_name),
                          key=lambda e: key(e["version"]), reverse=True)
    finished, rate = success_rate(history)
    return {"name": name, "versions": ordered, "finished": finished, "success_rate": rate,
            "history": [{
                "build_id": j.build_id, "job_id": j.id, "version": j.version, "arch": j.arch,
                "format": j.format, "state": j.state.value, "worker": j.worker,
                "attempt": j.attempt, "started_at": iso(j.started_at),
                "finished_at": iso(j.finished_at),
                "seconds": (round(j.finished_at - j.started_at, 1)
                            if j.started_at and j.finished_at else None),
            } for j in history]}


@bp.post("/packages/<name>/promote")
@require("admin")
def promote(name: str) -> Any:
    data = json_body({"version", "from", "to", "format"})
    for key in ("version", "from", "to"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise BadRequest(f"{key} is required and must be a string", field=key)
    fmt = data.get("format")
    if fmt is not None and (not isinstance(fmt, str) or not fmt):
        raise BadRequest("format must be the name of a package format", field="format")
    files = svc().repository.promote(name, data["version"], data["from"], data["to"], fmt)
    return {"promoted": files, "suite": data["to"]}


@bp.delete("/packages/<name>")
@require("admin")
def remove_package(name: str) -> Any:
    removed = svc().repository.remove(name, request.args.get("version"),
                                      request.args.get("arch"), request.args.get("format"))
    return {"removed": removed}

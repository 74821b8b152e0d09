"""What the repository holds: every archive, the versions of one package, promotion between
suites and removal."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from common.errors import BadRequest, NotFound
from master import formats
from master.api.helpers import iso, json_body, svc
from master.auth import require

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


@bp.get("/packages/<name>")
@require("read")
def package_versions(name: str) -> Any:
    """Every version of ``name`` the pool keeps (for rollback), and where each is served."""
    records = svc().store.packages.all(name)
    if not records:
        raise NotFound(f"the repository holds no {name}", package=name)
    versions: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in records:
        entry = versions.setdefault((r.format, r.version, r.arch), {
            "version": r.version, "arch": r.arch, "format": r.format, "filename": r.filename,
            "pool_path": r.pool_path, "size": r.size, "sha256": r.sha256, "suites": []})
        entry["suites"].append(r.suite)
    ordered: list[dict[str, Any]] = []
    for fmt_name in sorted({r.format for r in records}):
        key = formats.get(fmt_name).format.version_key
        ordered += sorted((e for e in versions.values() if e["format"] == fmt_name),
                          key=lambda e: key(e["version"]), reverse=True)
    return {"name": name, "versions": ordered}


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

"""Builds: asking for them, following them, their logs, restarting and cancelling them."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request, url_for

from common import formats as common_formats
from common.definition import MAX_NAME
from common.errors import BadRequest, Forbidden, NotFound
from common.states import JobState
from master import buildlogs
from master.api.helpers import build_json, flag_arg, int_arg, json_body, svc
from master.auth import caller_has, check_may_build, current_user, require
from master.store import Build, Job

bp = Blueprint("builds", __name__, url_prefix="/api/v1")

#: The most packages one request may name, and the longest name or reference (a URL).
MAX_PACKAGES = 1000
MAX_REFERENCE = 2000


def _found(build_id: int) -> tuple[Build, list[Job]]:
    found = svc().store.jobs.get_build(build_id)
    if found is None:
        raise NotFound(f"no build {build_id}", build=build_id)
    return found


@bp.post("/builds")
@require("build")
def create_build() -> Any:
    data = json_body({"packages", "arch"}, {"packages"})
    packages = data["packages"]
    if isinstance(packages, str):
        packages = [packages]
    if (not isinstance(packages, list) or not packages or len(packages) > MAX_PACKAGES
            or not all(isinstance(p, str) and p for p in packages)):
        raise BadRequest("packages must be a non-empty list of package names",
                         field="packages")
    for name in packages:
        if len(name) > MAX_REFERENCE or not name.isprintable():
            raise BadRequest(f"a package name or reference is at most {MAX_REFERENCE} "
                             "printable characters", field="packages")
        if len(name) > MAX_NAME and not common_formats.build_host().names_location(name):
            raise BadRequest(f"package names are at most {MAX_NAME} characters",
                             field="packages")
    arch = data.get("arch")
    if arch is not None and not isinstance(arch, str):
        raise BadRequest("arch must be a string", field="arch")
    services = svc()
    references = [p for p in packages if common_formats.build_host().names_location(p)]
    if references and not caller_has("admin"):
        # A .dsc URL or path, or a git repository, makes the master read files and reach
        # other hosts: only admins may ask for that; names are for everyone with `build`.
        raise Forbidden(f"only admins may build from a URL, a path or a git repository "
                        f"({references[0]!r}); others name packages", field="packages")
    check_may_build(packages)
    submitted = services.scheduler.submit(packages, arch, current_user())
    return {
        "id": submitted.build_id,
        "packages": packages,
        "jobs": [{"id": j, "package": p, "version": v, "arch": a, "format": f}
                 for j, p, v, a, f in submitted.jobs],
        "notes": list(submitted.notes),
        "url": url_for("builds.get_build", build_id=submitted.build_id, _external=True),
    }, 202


@bp.get("/builds")
@require("read")
def list_builds() -> Any:
    """Builds, newest first, filtered by state, package, requester and architecture."""
    limit = int_arg("limit", 50, 1, 1000)
    offset = int_arg("offset", 0)
    filters: dict[str, str | None] = {}
    for name in ("state", "package", "requester", "arch"):
        value = request.args.get(name)
        if value is not None and (not value or len(value) > MAX_REFERENCE
                                  or not value.isprintable()):
            raise BadRequest(f"{name} must be 1 to {MAX_REFERENCE} printable characters",
                             field=name)
        filters[name] = value
    if filters["state"] is not None and filters["state"] not in {s.value for s in JobState}:
        raise BadRequest(f"state must be one of {', '.join(s.value for s in JobState)}",
                         field="state")
    total, found = svc().store.jobs.find_builds(limit=limit, offset=offset, **filters)
    return {"builds": [build_json(b, j) for b, j in found], "total": total, "limit": limit,
            "offset": offset}


@bp.get("/builds/<id:build_id>")
@require("read")
def get_build(build_id: int) -> Any:
    return build_json(*_found(build_id))


@bp.get("/builds/<id:build_id>/packages/<name>/log")
@require("read")
def build_log(build_id: int, name: str) -> Any:
    services = svc()
    jobs = [j for j in _found(build_id)[1] if j.package == name]
    arch, fmt = request.args.get("arch"), request.args.get("format")
    if arch is not None:
        jobs = [j for j in jobs if j.arch == arch]
    if fmt is not None:
        jobs = [j for j in jobs if j.format == fmt]
    if not jobs:
        raise NotFound(f"build {build_id} has no package {name}"
                       + (f" for {arch}" if arch else "") + (f" as {fmt}" if fmt else ""),
                       build=build_id, package=name)
    if len({j.arch for j in jobs}) > 1:
        raise BadRequest(f"{name} is built for {', '.join(sorted({j.arch for j in jobs}))}: "
                         "choose one with ?arch=", field="arch")
    if len(jobs) > 1:
        raise BadRequest(f"{name} is made as {', '.join(j.format for j in jobs)}: "
                         "choose one with ?format=", field="format")
    job = jobs[0]
    data_dir = services.settings.master.data_dir
    if flag_arg("follow"):
        return Response(buildlogs.follow(services.store, data_dir, job.id),
                        mimetype="text/plain")
    path = buildlogs.log_path(data_dir, job)
    return Response(path.read_bytes() if path.is_file() else b"", mimetype="text/plain")


@bp.post("/builds/<id:build_id>/restart")
@require("build")
def restart_build(build_id: int) -> Any:
    check_may_build(list(_found(build_id)[0].packages))
    restarted = svc().scheduler.restart(build_id)
    return {**build_json(*_found(build_id)), "restarted": restarted}


@bp.post("/builds/<id:build_id>/cancel")
@require("build")
def cancel_build(build_id: int) -> Any:
    cancelled = svc().scheduler.cancel(build_id)
    return {**build_json(*_found(build_id)), "cancelled": [j.id for j in cancelled]}

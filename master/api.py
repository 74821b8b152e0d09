"""The HTTP API (``/api/v1``) and the repository (``/repo``) as Flask blueprints.

Views are thin: they check the caller's role, parse the request into the project's types, call
the store, scheduler or repository, and turn the answer into JSON. Errors are raised as the
project's exceptions and turned into JSON in one place (master.app).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, redirect, request, send_from_directory, url_for

from common import arch as archmod
from common import debian
from common.errors import BadRequest, Conflict, Forbidden, NotFound, PkgfarmError
from common.messages import (
    ClaimRequest,
    Heartbeat,
    JobAssignment,
    JobReport,
    LeaseRenewal,
    LocalJobRequest,
)
from common.states import JobState, build_state
from master import buildlogs, debrepo
from master.services import Services
from master.storage import LocalStorage
from master.store import Build, Job

#: The largest build log kept per attempt; what comes after is dropped with a note.
MAX_LOG_BYTES = 64 * 1024 * 1024


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


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


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(value: str, field: str) -> str:
    """A worker name: printable, one line, at most 200 characters."""
    if not value or len(value) > 200 or not value.isprintable():
        raise BadRequest(f"{field} must be 1 to 200 printable characters", field=field)
    return value


def check_attempt(value: int) -> int:
    if not 1 <= value <= 2**31:
        raise BadRequest("attempt must be a positive integer", field="attempt")
    return value


def create_blueprints(svc: Services) -> list[Blueprint]:
    api = Blueprint("api", __name__, url_prefix="/api/v1")
    repo = Blueprint("repo", __name__, url_prefix="/repo")
    auth = svc.auth
    lease_seconds = svc.settings.master.lease_seconds

    # -- helpers -------------------------------------------------------------------------------

    def log_path(job: Job, attempt: int | None = None) -> Path:
        return buildlogs.log_path(svc.settings.master.data_dir, job, attempt)

    def job_json(job: Job) -> dict[str, Any]:
        return {
            "id": job.id,
            "package": job.package,
            "version": job.version,
            "arch": job.arch,
            "status": job.state.value,
            "attempt": job.attempt,
            "worker": job.worker,
            "queued_at": _iso(job.queued_at),
            "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at),
            "error": job.error,
            "files": list(job.files),
            "log_url": url_for("api.build_log", build_id=job.build_id, name=job.package,
                               arch=job.arch, _external=True),
        }

    def build_json(build: Build, jobs: list[Job]) -> dict[str, Any]:
        return {
            "id": build.id,
            "created_at": _iso(build.created_at),
            "requested_by": build.requested_by,
            "packages": list(build.packages),
            "arch": build.arch,
            "status": build_state([j.state for j in jobs]).value,
            "jobs": [job_json(j) for j in jobs],
        }

    def live_attempt(job_id: int, attempt: int, token: str,
                     also: tuple[JobState, ...] = ()) -> Job:
        """The job, if the caller holds its current, running attempt (409/403 otherwise).

        The attempt must be the job's current one and still running (else 409: finished,
        re-queued, or never given out), the token must be the one issued at its claim and the
        caller must be the user who claimed it (else 403).
        """
        job = svc.store.get_job(job_id)
        if job is None:
            raise Forbidden(f"job {job_id} was never given to anyone", job=job_id)
        running = job.state == JobState.BUILDING or job.state in also
        if job.attempt != attempt or not running or job.token_hash is None:
            raise Conflict(f"attempt {attempt} of job {job_id} is not running (the job is "
                           f"{job.state.value}, attempt {job.attempt})", state=job.state.value)
        if not hmac.compare_digest(token_hash(token), job.token_hash):
            raise Forbidden("the token does not belong to this attempt")
        if job.claimed_by is not None and job.claimed_by != auth.current_user():
            raise Forbidden("this attempt was given to another user")
        return job

    def assignment(job: Job, token: str) -> dict[str, Any]:
        return JobAssignment(
            job_id=job.id, attempt=job.attempt, build_id=job.build_id, package=job.package,
            version=job.version, arch=job.arch, token=token,
            snapshot_b64=base64.b64encode(svc.store.job_snapshot(job.id)).decode(),
            lease_seconds=float(lease_seconds),
            apt_sources=(f"deb [trusted=yes] {request.host_url}repo "
                         f"{svc.settings.repository.suite} {svc.settings.repository.component}",),
        ).to_json()

    def start_log(job: Job) -> None:
        path = log_path(job)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")

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

    # -- health --------------------------------------------------------------------------------

    @api.get("/health")
    def health() -> Any:
        repo_settings = svc.settings.repository
        return {
            "status": "ok",
            "repository": {
                "url": url_for("repo.serve", path="", _external=True),
                "suite": repo_settings.suite,
                "component": repo_settings.component,
                "architectures": list(repo_settings.architectures),
            },
            "broker": "ok" if svc.broker_reachable() else "unreachable",
            "signing_key": svc.repository.signer.fingerprint if svc.repository.signer else None,
        }

    @api.get("/openapi.json")
    def openapi() -> Any:
        """The OpenAPI description of this API (master/openapi.yaml), as JSON."""
        return svc.openapi()

    # -- builds --------------------------------------------------------------------------------

    @api.post("/builds")
    @auth.require("build")
    def create_build() -> Any:
        data = json_body({"packages", "arch"}, {"packages"})
        packages = data["packages"]
        if isinstance(packages, str):
            packages = [packages]
        if (not isinstance(packages, list) or not packages or len(packages) > 1000
                or not all(isinstance(p, str) and p for p in packages)):
            raise BadRequest("packages must be a non-empty list of package names",
                             field="packages")
        arch = data.get("arch")
        if arch is not None and not isinstance(arch, str):
            raise BadRequest("arch must be a string", field="arch")
        references = [p for p in packages if not debian.PACKAGE_NAME_RE.fullmatch(p)]
        if references and "admin" not in auth.roles(auth.current_user() or ""):
            # A .dsc URL or path, or a git repository, makes the master read files and reach
            # other hosts: only admins may ask for that; names are for everyone with `build`.
            raise Forbidden(f"only admins may build from a URL, a path or a git repository "
                            f"({references[0]!r}); others name packages",
                            field="packages")
        submitted = svc.scheduler.submit(packages, arch, auth.current_user())
        return {
            "id": submitted.build_id,
            "packages": packages,
            "jobs": [{"id": j, "package": p, "version": v, "arch": a}
                     for j, p, v, a in submitted.jobs],
            "url": url_for("api.get_build", build_id=submitted.build_id, _external=True),
        }, 202

    @api.get("/builds")
    @auth.require("read")
    def list_builds() -> Any:
        limit = int_arg("limit", 50, 1, 1000)
        offset = int_arg("offset", 0)
        return {"builds": [build_json(b, j) for b, j in svc.store.list_builds(limit, offset)]}

    @api.get("/builds/<id:build_id>")
    @auth.require("read")
    def get_build(build_id: int) -> Any:
        found = svc.store.get_build(build_id)
        if found is None:
            raise NotFound(f"no build {build_id}", build=build_id)
        return build_json(*found)

    @api.get("/builds/<id:build_id>/packages/<name>/log")
    @auth.require("read")
    def build_log(build_id: int, name: str) -> Any:
        found = svc.store.get_build(build_id)
        if found is None:
            raise NotFound(f"no build {build_id}", build=build_id)
        jobs = [j for j in found[1] if j.package == name]
        arch = request.args.get("arch")
        if arch is not None:
            jobs = [j for j in jobs if j.arch == arch]
        if not jobs:
            raise NotFound(f"build {build_id} has no package {name}"
                           + (f" for {arch}" if arch else ""), build=build_id, package=name)
        if len(jobs) > 1:
            raise BadRequest(f"{name} is built for {', '.join(j.arch for j in jobs)}: "
                             "choose one with ?arch=", field="arch")
        job = jobs[0]
        if flag_arg("follow"):
            return Response(buildlogs.follow(svc.store, svc.settings.master.data_dir, job.id),
                            mimetype="text/plain")
        path = log_path(job)
        text = path.read_bytes() if path.is_file() else b""
        return Response(text, mimetype="text/plain")

    @api.post("/builds/<id:build_id>/restart")
    @auth.require("build")
    def restart_build(build_id: int) -> Any:
        restarted = svc.scheduler.restart(build_id)
        found = svc.store.get_build(build_id)
        assert found is not None
        return {**build_json(*found), "restarted": restarted}

    @api.post("/builds/<id:build_id>/cancel")
    @auth.require("build")
    def cancel_build(build_id: int) -> Any:
        if svc.store.get_build(build_id) is None:
            raise NotFound(f"no build {build_id}", build=build_id)
        cancelled = svc.store.cancel_build(build_id)
        for job in cancelled:
            svc.repository.discard_staged(job.id)
        found = svc.store.get_build(build_id)
        assert found is not None
        # A running attempt learns at its next lease renewal and stops its build.
        return {**build_json(*found), "cancelled": [j.id for j in cancelled]}

    # -- the worker protocol ----------------------------------------------------------------------

    @api.post("/jobs/<id:job_id>/claim")
    @auth.require("upload")
    def claim(job_id: int) -> Any:
        req = parse_message(ClaimRequest)
        check_name(req.worker, "worker")
        check_attempt(req.attempt)
        job = svc.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}", job=job_id)
        token = secrets.token_urlsafe(32)
        if not svc.store.claim(job_id, req.attempt, req.worker, auth.current_user(),
                               token_hash(token), lease_seconds):
            raise Conflict(f"attempt {req.attempt} of job {job_id} is stale (the job is "
                           f"{job.state.value}, attempt {job.attempt})", state=job.state.value,
                           stale=True)
        job = svc.store.get_job(job_id)
        assert job is not None
        start_log(job)
        return assignment(job, token)

    @api.post("/jobs")
    @auth.require("upload")
    def create_local_job() -> Any:
        req = parse_message(LocalJobRequest)
        check_name(req.worker, "worker")
        if not debian.PACKAGE_NAME_RE.fullmatch(req.package):
            raise BadRequest(f"{req.package!r} is not a package name", field="package")
        if not debian.is_valid_version(req.version):
            raise BadRequest(f"{req.version!r} is not a Debian version", field="version")
        served = svc.settings.repository.architectures
        if req.arch != archmod.ALL and req.arch not in served:
            raise BadRequest(f"this repository does not serve {req.arch!r} (it serves "
                             f"{', '.join(served)} and all)", field="arch")
        token = secrets.token_urlsafe(32)
        job = svc.store.create_local_job(req.package, req.version, req.arch, req.worker,
                                         auth.current_user(), token_hash(token), lease_seconds)
        start_log(job)
        return assignment(job, token), 201

    @api.post("/jobs/<id:job_id>/lease")
    @auth.require("upload")
    def renew_lease(job_id: int) -> Any:
        req = parse_message(LeaseRenewal)
        job = live_attempt(job_id, check_attempt(req.attempt), req.token)
        if not svc.store.renew_lease(job.id, req.attempt, lease_seconds):
            raise Conflict(f"attempt {req.attempt} of job {job_id} is no longer running")
        return {"id": job.id, "attempt": req.attempt, "lease_seconds": lease_seconds}

    @api.post("/jobs/<id:job_id>/log")
    @auth.require("upload")
    def append_log(job_id: int) -> Any:
        attempt = int_arg("attempt", lo=1)
        # A cancelled attempt may still send the rest of its log.
        job = live_attempt(job_id, attempt, request.headers.get("X-Pkgfarm-Token", ""),
                           also=(JobState.CANCELLED,))
        path = log_path(job, attempt)
        path.parent.mkdir(parents=True, exist_ok=True)
        chunk = request.get_data(cache=False)
        size = path.stat().st_size if path.exists() else 0
        with open(path, "ab") as fh:
            if size + len(chunk) > MAX_LOG_BYTES:
                fh.write(b"\n[pkgfarm: log limit reached, the rest is dropped]\n"
                         if size < MAX_LOG_BYTES else b"")
            else:
                fh.write(chunk)
        return {"size": path.stat().st_size}

    @api.post("/jobs/<id:job_id>/report")
    @auth.require("upload")
    def report(job_id: int) -> Any:
        req = parse_message(JobReport)
        job = live_attempt(job_id, check_attempt(req.attempt), req.token)
        files: list[str] = []
        if req.status == JobState.SUCCESS:
            manifest = {name: str(req.sha256.get(name, "")) for name in req.files}
            try:
                files = svc.repository.publish_job(job, manifest, auth.current_user())
            except PkgfarmError as exc:
                # The set is refused whole; the attempt ends failed with the reason.
                svc.store.finish(job.id, req.attempt, JobState.FAILED,
                                 f"publication refused: {exc.message}", [])
                svc.repository.discard_staged(job.id)
                raise
            state, error = JobState.SUCCESS, None
        elif req.status == JobState.FAILED:
            state, error = JobState.FAILED, (req.error or "the build failed")[:4000]
            svc.repository.discard_staged(job.id)
        else:
            raise BadRequest("status must be success or failed", field="status")
        if not svc.store.finish(job.id, req.attempt, state, error, files):
            raise Conflict(f"attempt {req.attempt} of job {job_id} is no longer running")
        svc.scheduler.enqueue_pending()  # jobs that waited for this one may start now
        return {"id": job.id, "status": state.value}

    @api.post("/workers/heartbeat")
    @auth.require("upload")
    def heartbeat() -> Any:
        beat = parse_message(Heartbeat)
        check_name(beat.name, "name")
        if not 1 <= beat.concurrency <= 1024:
            raise BadRequest("concurrency must be between 1 and 1024", field="concurrency")
        if len(beat.architectures) > 64 or len(beat.queues) > 65:
            raise BadRequest("too many architectures or queues", field="architectures")
        for a in beat.architectures:
            if not archmod.is_known(a):
                raise BadRequest(f"unknown architecture {a!r}", field="architectures")
        if beat.leaving:
            svc.store.forget_worker(beat.name)
        else:
            svc.store.heartbeat(beat.name, {
                "architectures": list(beat.architectures), "concurrency": beat.concurrency,
                "queues": list(beat.queues), "user": auth.current_user(),
            })
        return {"ok": True, "ttl": svc.settings.master.worker_ttl}

    @api.get("/workers")
    @auth.require("read")
    def workers() -> Any:
        building: dict[str, list[Job]] = {}
        for job in svc.store.building_jobs():
            building.setdefault(job.worker or "", []).append(job)
        now = time.time()
        return {"workers": [
            {
                "name": name,
                "architectures": info.get("architectures", []),
                "concurrency": info.get("concurrency"),
                "queues": info.get("queues", []),
                "last_seen": _iso(last_seen),
                "seconds_since_heartbeat": round(now - last_seen, 1),
                "building": [{"build_id": j.build_id, "job_id": j.id, "package": j.package,
                              "version": j.version, "arch": j.arch}
                             for j in building.get(name, [])],
            }
            for name, info, last_seen in svc.store.live_workers(svc.settings.master.worker_ttl)
        ]}

    # -- upload and packages ---------------------------------------------------------------------

    @api.route("/upload", methods=["PUT", "POST"])
    @auth.require("upload")
    def upload() -> Any:
        allowed = {"filename", "sha256", "job", "attempt"}
        unknown = sorted(set(request.args) - allowed)
        if unknown:
            raise BadRequest(f"unknown query parameter {unknown[0]!r}", field=unknown[0])
        filename = request.args.get("filename", "")
        sha256 = request.args.get("sha256") or request.headers.get("X-Checksum-Sha256", "")
        stream = request.stream
        if request.mimetype == "multipart/form-data":
            file = request.files.get("file")
            if file is None:
                raise BadRequest("the form must carry the archive in a 'file' field")
            filename = filename or file.filename or ""
            sha256 = sha256 or request.form.get("sha256", "")
            stream = file.stream
        if "job" in request.args:
            # A worker's file is staged; the attempt's report publishes the whole set.
            job = live_attempt(int_arg("job", lo=1), int_arg("attempt", lo=1),
                               request.headers.get("X-Pkgfarm-Token", ""))
            receipt = svc.repository.stage_upload(stream, filename, sha256, job=job,
                                                  content_length=request.content_length)
            return receipt.to_json(), 201
        if "admin" not in auth.roles(auth.current_user() or ""):
            # Workers publish only what a running attempt of theirs built; a person with the
            # admin role may still publish an archive by hand.
            raise Forbidden("an upload must name its job and attempt and carry the attempt's "
                            "token (X-Pkgfarm-Token); only admins upload without one")
        receipt = svc.repository.accept_upload(
            stream, filename, sha256, uploader=auth.current_user(),
            content_length=request.content_length)
        return receipt.to_json(), 200 if receipt.already_present else 201

    @api.get("/packages")
    @auth.require("read")
    def packages() -> Any:
        name = request.args.get("name")
        records = svc.store.packages(name)
        indexed = {r.id for suite in svc.settings.repository.all_suites
                   for a in svc.settings.repository.architectures
                   for r in debrepo.newest([x for x in records if x.suite == suite], a)}
        return {"packages": [
            {"name": r.name, "version": r.version, "arch": r.arch, "suite": r.suite,
             "component": r.component, "filename": r.filename,
             "pool_path": r.pool_path, "size": r.size, "sha256": r.sha256,
             "uploaded_at": _iso(r.uploaded_at), "uploaded_by": r.uploaded_by,
             "in_index": r.id in indexed}
            for r in records
        ]}

    @api.get("/packages/<name>")
    @auth.require("read")
    def package_versions(name: str) -> Any:
        """Every version of ``name`` the pool keeps (for rollback), and where each is served."""
        records = svc.store.packages(name)
        if not records:
            raise NotFound(f"the repository holds no {name}", package=name)
        versions: dict[tuple[str, str], dict[str, Any]] = {}
        for r in records:
            entry = versions.setdefault((r.version, r.arch), {
                "version": r.version, "arch": r.arch, "filename": r.filename,
                "pool_path": r.pool_path, "size": r.size, "sha256": r.sha256, "suites": []})
            entry["suites"].append(r.suite)
        ordered = sorted(versions.values(), key=lambda e: debian.version_key(e["version"]),
                         reverse=True)
        return {"name": name, "versions": ordered}

    @api.post("/packages/<name>/promote")
    @auth.require("admin")
    def promote(name: str) -> Any:
        data = json_body({"version", "from", "to"})
        for key in ("version", "from", "to"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise BadRequest(f"{key} is required and must be a string", field=key)
        files = svc.repository.promote(name, data["version"], data["from"], data["to"])
        return {"promoted": files, "suite": data["to"]}

    @api.delete("/packages/<name>")
    @auth.require("admin")
    def remove_package(name: str) -> Any:
        version = request.args.get("version")
        arch = request.args.get("arch")
        removed = svc.repository.remove(name, version, arch)
        return {"removed": removed}

    # -- the repository ----------------------------------------------------------------------------

    @repo.get("/", defaults={"path": ""})
    @repo.get("/<path:path>")
    def serve(path: str) -> Any:
        if not path or path.endswith("/"):
            raise NotFound("directory listings are not served")
        storage = svc.repository.storage
        if isinstance(storage, LocalStorage):
            # Index files under dists/ change in place, possibly twice within a second, and
            # If-Modified-Since has one-second resolution: answer them whole, always. Pool and
            # by-hash files never change, so conditional requests are safe for them.
            changing = path.startswith("dists/") and "/by-hash/" not in path
            return send_from_directory(storage.root, path, max_age=0,
                                       conditional=not changing)
        try:
            if svc.settings.storage.serve == "redirect":
                if not storage.exists(path):
                    raise FileNotFoundError(path)
                return redirect(storage.url(path, expires=600) or "", code=302)
            size = storage.size(path)
            stream = storage.open(path)
        except (FileNotFoundError, ValueError):
            raise NotFound(f"/repo/{path} does not exist") from None

        def body() -> Iterator[bytes]:
            with stream:
                while chunk := stream.read(1024 * 1024):
                    yield chunk
        return Response(body(), mimetype="application/octet-stream",
                        headers={"Content-Length": str(size)})

    return [api, repo]

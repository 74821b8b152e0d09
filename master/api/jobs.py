"""The worker protocol: claiming an attempt, renewing its lease, sending its log and report,
and recording a local build (``worker package-add --now``)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from common.messages import ClaimRequest, JobReport, LeaseRenewal, LocalJobRequest
from common.states import JobState
from master import buildlogs
from master.api.helpers import (
    check_attempt,
    check_name,
    int_arg,
    parse_message,
    repo_url,
    svc,
)
from master.auth import check_may_build, current_user, require

bp = Blueprint("jobs", __name__, url_prefix="/api/v1")

TOKEN_HEADER = "X-Pkgfarm-Token"  # noqa: S105 (a header name, not a secret)


@bp.post("/jobs/<id:job_id>/claim")
@require("upload")
def claim(job_id: int) -> Any:
    req = parse_message(ClaimRequest)
    check_name(req.worker, "worker")
    check_attempt(req.attempt)
    return svc().scheduler.claim(job_id, req.attempt, req.worker, current_user(),
                                 req.protocol, repo_url()).to_json()


@bp.post("/jobs")
@require("build")
def create_local_job() -> Any:
    """A local build is a build like any other: it needs the build role (and, to send its
    log, files and report, the upload role), and the user's package patterns apply."""
    req = parse_message(LocalJobRequest)
    check_name(req.worker, "worker")
    check_may_build([req.package])
    return svc().scheduler.create_local_job(req.package, req.version, req.arch, req.format,
                                            req.source_kind, req.worker, current_user(),
                                            req.protocol, repo_url()).to_json(), 201


@bp.post("/jobs/<id:job_id>/lease")
@require("upload")
def renew_lease(job_id: int) -> Any:
    req = parse_message(LeaseRenewal)
    scheduler = svc().scheduler
    job = scheduler.live_attempt(job_id, check_attempt(req.attempt), req.token, current_user())
    scheduler.renew_lease(job, req.attempt)
    return {"id": job.id, "attempt": req.attempt,
            "lease_seconds": svc().settings.master.lease_seconds}


@bp.post("/jobs/<id:job_id>/log")
@require("upload")
def append_log(job_id: int) -> Any:
    attempt = int_arg("attempt", lo=1)
    # A cancelled attempt may still send the rest of its log.
    job = svc().scheduler.live_attempt(job_id, attempt, request.headers.get(TOKEN_HEADER, ""),
                                       current_user(), also=(JobState.CANCELLED,))
    size = buildlogs.append(svc().settings.master.data_dir, job, attempt, request.stream)
    return {"size": size}


@bp.post("/jobs/<id:job_id>/report")
@require("upload")
def report(job_id: int) -> Any:
    req = parse_message(JobReport)
    scheduler = svc().scheduler
    job = scheduler.live_attempt(job_id, check_attempt(req.attempt), req.token, current_user())
    state = scheduler.report(job, req, current_user())
    return {"id": job.id, "status": state.value}

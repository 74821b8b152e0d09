"""Uploads: a worker's archive for its running attempt, or an admin's archive by hand."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, request

from common.errors import BadRequest, Forbidden
from master.api.helpers import int_arg, svc
from master.api.jobs import TOKEN_HEADER
from master.auth import caller_has, current_user, require

bp = Blueprint("uploads", __name__, url_prefix="/api/v1")

#: The longest file name an upload may give, in bytes: file systems keep names of up to 255
#: bytes, and the master writes a file under a slightly longer temporary name first.
MAX_FILENAME = 240


@bp.route("/upload", methods=["PUT", "POST"])
@require("upload")
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
    if len(filename.encode("utf-8", "surrogatepass")) > MAX_FILENAME:
        raise BadRequest(f"filename is longer than {MAX_FILENAME} bytes", field="filename")
    services = svc()
    if "job" in request.args:
        # A worker's file is staged; the attempt's report publishes the whole set.
        job = services.scheduler.live_attempt(int_arg("job", lo=1), int_arg("attempt", lo=1),
                                              request.headers.get(TOKEN_HEADER, ""),
                                              current_user())
        g.pkgfarm_upload_format = job.format
        receipt = services.repository.stage_upload(stream, filename, sha256, job=job,
                                                   content_length=request.content_length)
        g.pkgfarm_upload_size = receipt.size
        return receipt.to_json(), 201
    if not caller_has("admin"):
        # Workers publish only what a running attempt of theirs built; a person with the
        # admin role may still publish an archive by hand.
        raise Forbidden("an upload must name its job and attempt and carry the attempt's "
                        f"token ({TOKEN_HEADER}); only admins upload without one")
    g.pkgfarm_upload_format = services.repository.format_name(filename)
    receipt = services.repository.accept_upload(stream, filename, sha256,
                                                uploader=current_user(),
                                                content_length=request.content_length)
    g.pkgfarm_upload_size = receipt.size
    return receipt.to_json(), 200 if receipt.already_present else 201

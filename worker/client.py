"""The worker's side of the HTTP protocol with the master, with retries and backoff.

Connection failures and 5xx answers are retried with exponential backoff (the master may be
restarting); 4xx answers are final and raised as the project's errors, carrying the master's
message.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import requests

from common.config import WorkerSettings
from common.errors import (
    BadRequest,
    ConfigError,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PkgfarmError,
    Unauthorized,
    Unavailable,
    Unprocessable,
)
from common.messages import (
    ClaimRequest,
    Heartbeat,
    JobAssignment,
    JobReport,
    LeaseRenewal,
    LocalJobRequest,
    UploadReceipt,
)

log = logging.getLogger(__name__)

_ERRORS: dict[int, type[PkgfarmError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    413: PayloadTooLarge, 422: Unprocessable,
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


class MasterClient:
    def __init__(self, settings: WorkerSettings, *, retry_for: float = 600.0,
                 timeout: float = 60.0) -> None:
        if not settings.password:
            raise ConfigError("worker.password is not set (put it in the config or in "
                              "PKGFARM_WORKER_PASSWORD)", key="worker.password")
        self.base = settings.master_url.rstrip("/")
        self.session = requests.Session()
        self.session.auth = (settings.username, settings.password)
        self.ca_file = settings.ca_file
        # Given with every request: requests lets REQUESTS_CA_BUNDLE override a session's
        # verify, never a request's own.
        self.verify: str | bool = settings.ca_file or True
        self.retry_for = retry_for
        self.timeout = timeout

    def _request(self, method: str, path: str, *, retry_for: float | None = None,
                 body_path: Path | None = None, timeout: float | None = None,
                 **kwargs: Any) -> requests.Response:
        deadline = time.monotonic() + (self.retry_for if retry_for is None else retry_for)
        timeout = self.timeout if timeout is None else timeout
        delay = 0.5
        while True:
            try:
                if body_path is not None:
                    with open(body_path, "rb") as fh:
                        resp = self.session.request(method, self.base + path, data=fh,
                                                    timeout=timeout, verify=self.verify,
                                                    **kwargs)
                else:
                    resp = self.session.request(method, self.base + path, timeout=timeout,
                                                verify=self.verify, **kwargs)
            except requests.exceptions.SSLError as exc:
                # Not a passing trouble: the master's certificate is not one this worker trusts.
                raise CertificateError(
                    f"cannot verify the TLS certificate of the master at {self.base} "
                    f"(worker.ca_file: {self.ca_file or 'the system CA bundle'}): "
                    f"{_ssl_reason(exc)}") from None
            except requests.RequestException as exc:
                problem = f"cannot reach the master at {self.base}: {exc.__class__.__name__}"
            else:
                if resp.status_code < 400:
                    return resp
                message = _message(resp)
                if resp.status_code < 500:
                    raise _ERRORS.get(resp.status_code, BadRequest)(message)
                problem = f"the master answered {resp.status_code}: {message}"
            if time.monotonic() + delay > deadline:
                raise Unavailable(problem)
            log.warning("%s; retrying in %.1f s", problem, delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)

    # -- protocol ------------------------------------------------------------------------------

    def health(self, retry_for: float | None = None) -> dict[str, Any]:
        data: dict[str, Any] = self._request("GET", "/api/v1/health",
                                             retry_for=retry_for).json()
        return data

    def claim(self, job_id: int, attempt: int, worker: str) -> JobAssignment | None:
        """The assignment, or None when the master says the attempt is stale."""
        try:
            resp = self._request("POST", f"/api/v1/jobs/{job_id}/claim",
                                 json=ClaimRequest(attempt, worker).to_json())
        except (Conflict, NotFound):
            return None
        return JobAssignment.from_json(resp.json())

    def create_local_job(self, package: str, version: str, arch: str, worker: str
                         ) -> JobAssignment:
        """Record a build this worker runs on its own; the answer holds its token."""
        resp = self._request("POST", "/api/v1/jobs", json=LocalJobRequest(
            package=package, version=version, arch=arch, worker=worker).to_json())
        return JobAssignment.from_json(resp.json())

    def renew_lease(self, assignment: JobAssignment, retry_for: float) -> bool:
        """True if renewed; False when the master says the attempt is no longer ours."""
        try:
            # A renewal that hangs on a dead link must not outlive the lease it renews.
            self._request("POST", f"/api/v1/jobs/{assignment.job_id}/lease",
                          json=LeaseRenewal(assignment.attempt, assignment.token).to_json(),
                          retry_for=retry_for, timeout=max(retry_for, 1.0))
        except (Conflict, NotFound, Forbidden):
            return False
        return True

    def append_log(self, assignment: JobAssignment, text: str,
                   retry_for: float | None = None) -> None:
        self._request("POST", f"/api/v1/jobs/{assignment.job_id}/log",
                      params={"attempt": assignment.attempt}, data=text.encode(),
                      headers={"X-Pkgfarm-Token": assignment.token,
                               "Content-Type": "text/plain; charset=utf-8"},
                      retry_for=retry_for)

    def report(self, assignment: JobAssignment, status: str, error: str | None = None,
               files: list[str] | None = None, sha256: dict[str, str] | None = None) -> None:
        report = JobReport(attempt=assignment.attempt, token=assignment.token, status=status,
                           error=error, files=tuple(files or ()), sha256=sha256 or {})
        self._request("POST", f"/api/v1/jobs/{assignment.job_id}/report", json=report.to_json())

    def upload(self, archive: Path, assignment: JobAssignment | None = None) -> UploadReceipt:
        params: dict[str, Any] = {"filename": archive.name, "sha256": sha256_of(archive)}
        headers = {"Content-Type": "application/vnd.debian.binary-package"}
        if assignment is not None:
            params.update(job=assignment.job_id, attempt=assignment.attempt)
            headers["X-Pkgfarm-Token"] = assignment.token
        resp = self._request("PUT", "/api/v1/upload", params=params, headers=headers,
                             body_path=archive)
        return UploadReceipt.from_json(resp.json())

    def heartbeat(self, beat: Heartbeat) -> None:
        self._request("POST", "/api/v1/workers/heartbeat", json=beat.to_json(), retry_for=0)

    def queue_build(self, packages: list[str], arch: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"packages": packages}
        if arch:
            body["arch"] = arch
        data: dict[str, Any] = self._request("POST", "/api/v1/builds", json=body).json()
        return data

    def index_lists(self, filename: str, suite: str, component: str, arch: str) -> bool:
        """Whether the public index for ``arch`` lists ``filename`` (no credentials needed)."""
        resp = self._request(
            "GET", f"/repo/dists/{suite}/{component}/binary-{arch}/Packages")
        return any(line.startswith("Filename: ") and line.endswith("/" + filename)
                   for line in resp.text.splitlines())


class CertificateError(PkgfarmError):
    """The master's HTTPS certificate does not verify against the configured CA bundle."""


def _ssl_reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("certificate verify failed", "hostname mismatch", "self-signed",
                   "wrong version number"):
        if marker in text:
            start = text.index(marker)
            return text[start:start + 120].split("'")[0].split(")")[0]
    return text[-200:]


def _message(resp: requests.Response) -> str:
    try:
        body = resp.json()
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])
    except ValueError:
        pass
    return resp.text.strip()[:500] or resp.reason

"""The worker's side of the HTTP protocol with the master, with retries and backoff.

Connection failures and answers whose error class says so (429 too many requests, 503
unavailable, other 5xx: the master may be restarting or busy) are retried with exponential
backoff, honouring Retry-After, until the call's time runs out; other answers are final and
raised as the project's errors, carrying the master's message. The status-to-error table is
the one the error hierarchy defines (common.errors.error_for_status).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import requests

from common.config import WorkerSettings
from common.digests import sha256_file
from common.errors import (
    ConfigError,
    Conflict,
    Forbidden,
    NotFound,
    PkgfarmError,
    Unavailable,
    error_for_status,
)
from common.messages import (
    PROTOCOL_VERSION,
    ClaimRequest,
    Heartbeat,
    JobAssignment,
    JobReport,
    LeaseRenewal,
    LocalJobRequest,
    UploadReceipt,
)

log = logging.getLogger(__name__)

#: The longest wait a Retry-After may ask for between two tries.
MAX_RETRY_AFTER = 60.0


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
                error = error_for_status(resp.status_code)
                message = _message(resp)
                if not error.retryable:
                    raise error(message)
                problem = f"the master answered {resp.status_code}: {message}"
                wait = _retry_after(resp)
                if wait is not None:
                    delay = max(delay, wait)
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
                                 json=ClaimRequest(attempt, worker, PROTOCOL_VERSION).to_json())
        except (Conflict, NotFound):
            return None
        return JobAssignment.from_json(resp.json())

    def create_local_job(self, package: str, version: str, arch: str, worker: str,
                         fmt: str, source_kind: str) -> JobAssignment:
        """Record a build this worker runs on its own; the answer holds its token."""
        resp = self._request("POST", "/api/v1/jobs", json=LocalJobRequest(
            package=package, version=version, arch=arch, worker=worker, format=fmt,
            source_kind=source_kind, protocol=PROTOCOL_VERSION).to_json())
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
        params: dict[str, Any] = {"filename": archive.name, "sha256": sha256_file(archive)}
        headers = {"Content-Type": "application/octet-stream"}
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

    def get_text(self, path: str) -> str:
        """The text of a public page of the master (the repository's index, say)."""
        return self._request("GET", path).text

    def get_bytes(self, path: str) -> bytes:
        """The bytes of a public file of the master (a compressed index, say)."""
        return self._request("GET", path).content


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


def _retry_after(resp: requests.Response) -> float | None:
    """The seconds a Retry-After header asks for (capped), or None."""
    try:
        return min(float(resp.headers.get("Retry-After", "")), MAX_RETRY_AFTER)
    except ValueError:
        return None


def _message(resp: requests.Response) -> str:
    try:
        body = resp.json()
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])
    except ValueError:
        pass
    return resp.text.strip()[:500] or resp.reason

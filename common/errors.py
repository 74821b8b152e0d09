"""The project's one error hierarchy, and the one table from HTTP statuses to its classes.

`PkgfarmError` is the base of every error pkgfarm raises on purpose; the CLIs print its message
and exit non-zero. Errors an HTTP answer can carry derive from `ApiError`, and each knows its
status: the master's one handler turns any of them into a JSON body with that status, and the
worker's client turns a status back into the same class with `error_for_status`, a table derived
from the classes below (never written twice). Failures that happen on a worker (a build script,
a configuration file) are plain `PkgfarmError`s: they have no HTTP status.
"""

from __future__ import annotations

from typing import Any


class PkgfarmError(Exception):
    """Base of every error pkgfarm raises on purpose."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, **self.details}


class ConfigError(PkgfarmError):
    """The configuration file or environment is wrong; names the key at fault."""


class BuildFailed(PkgfarmError):
    """A build script or packaging step failed; the message says which and why."""


class BuildCancelled(BuildFailed):
    """The build was stopped because its attempt is no longer this worker's."""


class ApiError(PkgfarmError):
    """An error an HTTP answer carries, with its status."""

    status = 500
    #: whether a client should try the same request again later (with backoff)
    retryable = False


class BadRequest(ApiError):
    status = 400


class ProtocolMismatch(BadRequest):
    """A worker speaks another version of the master-worker protocol than this master."""


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class Unprocessable(ApiError):
    """The request was well formed but its content is refused (bad checksum, bad archive)."""

    status = 422


class DefinitionError(Unprocessable):
    """A package definition is malformed; names the file and the field at fault."""


class UnsafeArchive(Unprocessable):
    """A tarball from outside holds a member that could reach outside its folder or carry
    privileges (an absolute name, '..', a link pointing outside, a device, a setuid bit)."""


class TooManyRequests(ApiError):
    status = 429
    retryable = True


class InternalError(ApiError):
    """The master failed on its side; its log has the details."""

    status = 500
    retryable = True


class Unavailable(ApiError):
    """A dependency (the broker, a mirror, the master itself) cannot be reached right now."""

    status = 503
    retryable = True


def _most_general() -> dict[int, type[ApiError]]:
    """Each status's class: the one whose parent has another status (or is ApiError)."""
    table: dict[int, type[ApiError]] = {}
    todo: list[type[ApiError]] = list(ApiError.__subclasses__())
    while todo:
        cls = todo.pop(0)
        table.setdefault(cls.status, cls)
        todo.extend(cls.__subclasses__())
    return table


#: status -> the class of the hierarchy that stands for it
STATUS_ERRORS: dict[int, type[ApiError]] = _most_general()


def error_for_status(status: int) -> type[ApiError]:
    """The class of an HTTP error status: its own class, else the class of its hundred (4xx
    unknown to pkgfarm are bad requests, 5xx are internal errors)."""
    if status in STATUS_ERRORS:
        return STATUS_ERRORS[status]
    return InternalError if status >= 500 else BadRequest

"""The project's one error hierarchy.

Every error the master can answer with knows its HTTP status, so one handler turns any of them
into a JSON body; the CLIs print the same message and exit non-zero.
"""

from __future__ import annotations

from typing import Any


class PkgfarmError(Exception):
    """Base of every error pkgfarm raises on purpose."""

    status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, **self.details}


class ConfigError(PkgfarmError):
    """The configuration file or environment is wrong; names the key at fault."""


class DefinitionError(PkgfarmError):
    """A package definition is malformed; names the file and the field at fault."""

    status = 422


class BadRequest(PkgfarmError):
    status = 400


class Unauthorized(PkgfarmError):
    status = 401


class Forbidden(PkgfarmError):
    status = 403


class NotFound(PkgfarmError):
    status = 404


class Conflict(PkgfarmError):
    status = 409


class PayloadTooLarge(PkgfarmError):
    status = 413


class Unprocessable(PkgfarmError):
    """The request was well formed but its content is refused (bad checksum, bad archive)."""

    status = 422


class UnsafeArchive(Unprocessable):
    """A tarball from outside holds a member that could reach outside its folder or carry
    privileges (an absolute name, '..', a link pointing outside, a device, a setuid bit)."""


class Unavailable(PkgfarmError):
    """A dependency of the master (the broker) cannot be reached right now."""

    status = 503


class BuildFailed(PkgfarmError):
    """A build script or packaging step failed; the message says which and why."""


class BuildCancelled(BuildFailed):
    """The build was stopped because its attempt is no longer this worker's."""


class TooManyRequests(PkgfarmError):
    status = 429

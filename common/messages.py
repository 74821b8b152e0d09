"""Wire messages between master and workers: one frozen dataclass each, serialised here.

``from_json`` ignores keys it does not know, so master and workers can be upgraded at
different times; a missing required key or a wrong type raises ValueError with the key's name.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Self

#: The version of the protocol between master and workers (claim, lease, log, report, upload).
#: 1: pkgfarm as of commit 426347d (no version sent); 2: jobs name their format and the kind of
#: source their snapshot holds; 3: an assignment's sources of build dependencies are
#: ``build_sources`` (2 called them ``apt_sources``). A master refuses a worker that speaks
#: another version.
PROTOCOL_VERSION = 3


class Message:
    """JSON round-trip for the dataclasses below."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, data: Any) -> Self:
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: expected a JSON object")
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise ValueError(f"{cls.__name__}: {f.name} is required")
                continue
            kwargs[f.name] = _check(hints[f.name], data[f.name], f"{cls.__name__}.{f.name}")
        return cls(**kwargs)


def _check(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(inner[0], value, where)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: must be a list")
        return tuple(_check(args[0], v, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: must be an object")
        return dict(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: must be a number")
        return float(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: must be true or false")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: must be a string")
        return value
    return value


@dataclass(frozen=True)
class BuildTask(Message):
    """What the Redis message carries: ids only. The worker claims the rest from the master."""

    job_id: int
    attempt: int


@dataclass(frozen=True)
class ClaimRequest(Message):
    attempt: int
    worker: str
    #: the protocol the worker speaks; absent (1) from workers older than the field
    protocol: int = 1


@dataclass(frozen=True)
class JobAssignment(Message):
    """The master's answer to a successful claim."""

    job_id: int
    attempt: int
    build_id: int
    package: str
    version: str
    arch: str
    #: per-attempt secret; uploads and reports for this attempt must carry it.
    token: str
    #: base64 of the definition snapshot (common.definition.snapshot); empty for local jobs
    snapshot_b64: str
    #: the attempt is lost unless renewed within this many seconds
    lease_seconds: float = 90.0
    #: package sources a build may install build dependencies from: the farm's own
    #: repository, as the build environment's package manager reads it (its format's
    #: `build_sources`)
    build_sources: tuple[str, ...] = ()
    #: the package format the job makes, and what its snapshot holds
    format: str = "deb"
    source_kind: str = "definition"


@dataclass(frozen=True)
class LocalJobRequest(Message):
    """A worker asks to record a build it runs on its own (``worker package-add --now``)."""

    package: str
    version: str
    arch: str
    worker: str
    format: str = "deb"
    source_kind: str = "definition"
    protocol: int = 1


@dataclass(frozen=True)
class LeaseRenewal(Message):
    attempt: int
    token: str


@dataclass(frozen=True)
class JobReport(Message):
    """A worker's final word on an attempt."""

    attempt: int
    token: str
    status: str  # a ReportStatus: success | failed
    error: str | None = None
    files: tuple[str, ...] = ()
    #: the manifest: the sha256 of every file in ``files``, checked against what was uploaded
    sha256: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Heartbeat(Message):
    name: str
    architectures: tuple[str, ...]
    concurrency: int
    queues: tuple[str, ...] = ()
    #: job ids this worker is building right now
    building: tuple[int, ...] = ()
    #: true when the worker is shutting down and should leave the list now
    leaving: bool = False


@dataclass(frozen=True)
class UploadReceipt(Message):
    filename: str
    pool_path: str
    sha256: str
    size: int
    #: the same archive was already in the pool; nothing changed
    already_present: bool = False

"""Where a build runs: on this machine (`HostEnvironment`) or in a fresh root (`CleanEnvironment`).

Both are used per build as context managers and offer the same four things: add apt sources,
install packages (by name or relation), install an unpacked Debian source's build
dependencies, and run a command with a time limit that stops everything it started.

Build environments are Debian systems whatever package format a build makes (build
dependencies are Debian packages), so this package, like the deb format's own modules, runs
Debian's tools: apt-get, dpkg-query and mmdebstrap.

- `processes`: a command as a process tree of its own, with a time limit and a stop, its
  output copied into a bounded log;
- `limits`: what a build step may use (memory, processes, disk) and the measurements that
  hold it to that;
- `host`: builds on this machine, confined by bubblewrap;
- `bases`: the cached base tarball of clean roots and its unpacked lower layer;
- `clean`: a fresh root per build, deleted when it ends (the default).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol

from common.arch import host_arch
from common.config import WorkerSettings
from common.errors import BuildFailed
from worker.environment.bases import can_run, foreign_message
from worker.environment.clean import ROOT_NAME, CleanEnvironment
from worker.environment.host import HostEnvironment
from worker.environment.limits import StepLimits
from worker.environment.processes import Log

__all__ = ["ROOT_NAME", "BuildEnvironment", "CleanEnvironment", "HostEnvironment", "Log",
           "environment_for"]


class BuildEnvironment(Protocol):
    """One build's environment; enter it before use, leave it when the build is over.

    A build has a folder of its own that only the worker writes (``private``: its log, the
    trees it packs, the clean root) and, inside it, the one folder its steps may write
    (``area``). A build step (`run`) runs as ``build_uid`` when the worker is root, offline
    unless asked otherwise, within the worker's limits; after it the worker takes what it
    made out of the area with `take_tree` and never follows a link the step left there.
    """

    #: the Debian architecture of what runs inside (the machine's, or an emulated one)
    arch: str
    private: Path
    area: Path
    #: the user build steps run as, or None when the worker is not root (it is unprivileged)
    build_uid: int | None

    def __enter__(self) -> BuildEnvironment: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def extra_sources(self, lines: Sequence[str]) -> None:
        """Add one-line apt sources (``deb [trusted=yes] http://MASTER/repo stable main``);
        apt reads them before the next installation."""

    def install(self, packages: Sequence[str], out: IO[str]) -> None:
        """Install packages given by name or relation; BuildFailed names what is missing."""

    def build_dep(self, source_dir: Path, out: IO[str], arch_indep: bool | None) -> None:
        """Install what building the unpacked Debian source needs: with -A
        (``arch_indep=True``), -B (False) or -b (None)."""

    def run(self, argv: Sequence[str], cwd: Path, env: dict[str, str], timeout: float,
            out: IO[str], cancel: threading.Event | None = None, *,
            what: str = "the build script", network: bool = False) -> None:
        """Run the build step ``argv`` in ``cwd`` (inside the area); BuildFailed on a
        non-zero exit, the time limit or a limit of the worker, BuildCancelled when
        ``cancel`` is set; everything it started is stopped."""


def limits_of(settings: WorkerSettings) -> StepLimits:
    return StepLimits(memory=settings.limits.memory_bytes, processes=settings.limits.processes,
                      disk=settings.limits.disk_bytes)


def environment_for(settings: WorkerSettings, arch: str, workdir: Path,
                    extra_apt_lines: Sequence[str] = (), *, out: IO[str] | None = None,
                    log: Log | None = None, cancel: threading.Event | None = None,
                    label_only: bool = False,
                    hidden: Sequence[Path] = ()) -> BuildEnvironment:
    """The environment ``settings.environment`` asks for, to build for ``arch`` in ``workdir``.

    ``all`` builds on the machine's architecture. In clean mode an architecture the machine
    cannot run raises BuildFailed, unless ``label_only`` (a YAML definition, whose architecture
    is only a label): then a root of the machine's architecture stands in, as host mode does.
    ``hidden`` are paths build steps on this machine must not see (the worker's config, keys
    and folders); a clean root sees nothing of the machine anyway.
    """
    if settings.environment == "host":
        return HostEnvironment(workdir, sandbox=settings.sandbox,
                               install_deps=settings.install_build_depends,
                               extra_apt_lines=extra_apt_lines, log=log,
                               timeout=settings.build_timeout, cancel=cancel,
                               ca_file=settings.ca_file, build_uid=settings.build_uid,
                               limits=limits_of(settings), hidden=hidden)
    target = host_arch() if arch == "all" else arch
    if not can_run(target):
        if not label_only:
            raise BuildFailed(foreign_message(target))
        target = host_arch()
    return CleanEnvironment(settings, target, workdir, extra_apt_lines, out=out, log=log,
                            cancel=cancel)

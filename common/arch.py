"""Architecture names and the queue each one is served from.

The queue name comes from one function, `queue_for`, which the scheduler, the worker's
consumer list, the recipes and the tests all use.
"""

from __future__ import annotations

ALL = "all"
ANY = "any"

#: Debian architecture names a farm may serve (dpkg-architecture -L, the release architectures
#: and the common ports). Anything else is refused as a typo.
KNOWN_ARCHES: frozenset[str] = frozenset(
    {
        "amd64", "arm64", "armel", "armhf", "i386", "mips64el", "mipsel", "ppc64el", "s390x",
        "riscv64", "loong64", "alpha", "hppa", "m68k", "powerpc", "ppc64", "sh4", "sparc64",
        "x32", "ia64",
    }
)


def is_known(arch: str) -> bool:
    return arch in KNOWN_ARCHES


def queue_for(arch: str) -> str:
    """The Celery queue that carries builds for ``arch`` (``all`` included)."""
    if arch != ALL and arch not in KNOWN_ARCHES:
        raise ValueError(f"unknown architecture {arch!r}")
    return f"build.{arch}"


def queues_for_worker(arches: list[str] | tuple[str, ...]) -> list[str]:
    """Every queue a worker tagged with ``arches`` consumes: one per arch, plus ``build.all``."""
    names = [queue_for(a) for a in arches if a != ALL]
    names.append(queue_for(ALL))
    return names

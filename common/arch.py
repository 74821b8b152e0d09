"""Architecture names and the queue each one is served from.

The queue name comes from one function, `queue_for`, which the scheduler, the worker's
consumer list, the recipes and the tests all use.
"""

from __future__ import annotations

import functools
import os

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


#: The farm's name (Debian's) of each CPU the kernel reports (``uname -m``). A 32-bit ARM
#: machine is taken as armhf, the usual Debian port for it.
MACHINES: dict[str, str] = {
    "x86_64": "amd64", "aarch64": "arm64", "i686": "i386", "i586": "i386", "i386": "i386",
    "armv7l": "armhf", "armv8l": "armhf", "armv6l": "armel", "armv5tel": "armel",
    "ppc64le": "ppc64el", "ppc64": "ppc64", "ppc": "powerpc", "s390x": "s390x",
    "riscv64": "riscv64", "loongarch64": "loong64", "mips64": "mips64el", "mips": "mipsel",
    "sparc64": "sparc64", "alpha": "alpha", "parisc": "hppa", "parisc64": "hppa",
    "m68k": "m68k", "sh4": "sh4", "ia64": "ia64",
}


@functools.cache
def host_arch() -> str:
    """The farm's name of this machine's architecture."""
    machine = os.uname().machine
    try:
        return MACHINES[machine]
    except KeyError:
        raise ValueError(f"this machine's CPU ({machine}) has no architecture name the farm "
                         "knows") from None


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

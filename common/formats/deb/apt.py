"""A throwaway apt state, and the machine's apt sources as one-line ``deb-src`` entries.

`AptState` runs apt-get and apt-cache with a configuration of its own (``APT_CONFIG``): its own
source list, package lists, status file and cache, all under one folder. The machine's apt
configuration and state are never read for anything but its trusted keys, and never written.
The master looks Debian source packages up with one; a worker downloads them with another.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from debian.deb822 import Deb822

from common.arch import host_arch
from common.errors import NotFound, PkgfarmError, Unavailable
from common.locks import file_lock

SOURCES_LIST = Path("/etc/apt/sources.list")
SOURCES_PARTS = Path("/etc/apt/sources.list.d")

#: The options of a one-line source entry kept when it is turned into deb-src.
_KEPT_OPTIONS = ("signed-by", "trusted")

_ONE_LINE_RE = re.compile(r"^(?P<type>deb|deb-src)\s+(?:\[(?P<options>[^\]]*)\]\s+)?(?P<rest>.+)$")


def _option_words(options: str) -> dict[str, str]:
    """``[arch=amd64 signed-by=/k.gpg]`` as a mapping (keys lower-cased)."""
    result = {}
    for word in options.split():
        if "=" in word:
            key, value = word.split("=", 1)
            result[key.strip().lower()] = value.strip()
    return result


def _deb_src_line(options: dict[str, str], uri: str, suite: str,
                  components: Sequence[str]) -> str:
    kept = [f"{k}={options[k]}" for k in _KEPT_OPTIONS if options.get(k)]
    opts = f"[{' '.join(kept)}] " if kept else ""
    tail = " ".join([suite, *components])
    return f"deb-src {opts}{uri} {tail}"


def parse_one_line_sources(text: str) -> list[str]:
    """The deb-src lines of a sources.list text (``deb`` entries turned into ``deb-src``)."""
    lines = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        m = _ONE_LINE_RE.match(line)
        if not m:
            continue
        words = m["rest"].split()
        if len(words) < 2:
            continue
        uri, suite, components = words[0], words[1], words[2:]
        if not suite.endswith("/") and not components:
            continue  # not a valid entry: apt would refuse it too
        lines.append(_deb_src_line(_option_words(m["options"] or ""), uri, suite, components))
    return lines


def parse_deb822_sources(text: str, keyring_dir: Path | None = None,
                         origin: str = "sources") -> list[str]:
    """The deb-src lines of a deb822 ``.sources`` text.

    A Signed-By naming keyring files is kept as ``signed-by=``. One holding the key itself
    (an armoured block) cannot be written on one line: it is saved as a file in
    ``keyring_dir`` and referred to, or the entry is left out when there is no such folder.
    """
    lines = []
    for number, para in enumerate(Deb822.iter_paragraphs(text.splitlines(keepends=True),
                                                              use_apt_pkg=False)):
        if para.get("Enabled", "yes").strip().lower() in ("no", "false", "0"):
            continue
        types = para.get("Types", "").split()
        if not ({"deb", "deb-src"} & set(types)):
            continue
        options: dict[str, str] = {}
        signed_by = para.get("Signed-By", "").strip()
        if "BEGIN PGP PUBLIC KEY BLOCK" in signed_by:
            if keyring_dir is None:
                continue
            keyring_dir.mkdir(parents=True, exist_ok=True)
            key_file = keyring_dir / f"{origin}-{number}.asc"
            key_lines = [ln.strip() for ln in signed_by.splitlines()]
            key_file.write_text("\n".join("" if ln == "." else ln for ln in key_lines) + "\n")
            options["signed-by"] = str(key_file)
        elif signed_by:
            options["signed-by"] = ",".join(signed_by.replace(",", " ").split())
        if para.get("Trusted", "").strip().lower() == "yes":
            options["trusted"] = "yes"
        components = para.get("Components", "").split()
        for uri in para.get("URIs", "").split():
            for suite in para.get("Suites", "").split():
                if not suite.endswith("/") and not components:
                    continue
                lines.append(_deb_src_line(options, uri, suite,
                                           components if not suite.endswith("/") else []))
    return lines


def machine_deb_src_lines(sources_list: Path = SOURCES_LIST,
                          parts_dir: Path = SOURCES_PARTS,
                          keyring_dir: Path | None = None) -> list[str]:
    """This machine's apt sources as one-line ``deb-src`` entries, each once, in apt's order.

    Reads ``sources_list`` and, in name order as apt does, ``parts_dir``'s ``*.list`` and
    ``*.sources`` files (other names, such as ``*.disabled``, are ignored as apt ignores them).
    """
    found: list[str] = []
    if sources_list.is_file():
        found.extend(parse_one_line_sources(sources_list.read_text(errors="replace")))
    if parts_dir.is_dir():
        for path in sorted(parts_dir.iterdir()):
            if not path.is_file():
                continue
            if path.suffix == ".list":
                found.extend(parse_one_line_sources(path.read_text(errors="replace")))
            elif path.suffix == ".sources":
                found.extend(parse_deb822_sources(path.read_text(errors="replace"),
                                                  keyring_dir, origin=path.stem))
    return list(dict.fromkeys(found))


def _write_if_changed(path: Path, text: str) -> bool:
    """Replace ``path`` with ``text`` atomically if it differs (another process sharing the
    folder may be reading it: it sees the old file or the new one, never half of one)."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def update_failures(lines: Sequence[str]) -> list[str]:
    """The lines by which ``apt-get update`` says an index could not be used.

    apt-get update exits 0 when it keeps old indexes (or none); these lines tell. The ``Err:``
    lines of single attempts are not counted: apt tries other compressions after them.
    """
    return [ln.strip() for ln in lines
            if ln.startswith(("E:", "W: Failed to fetch", "W: GPG error",
                              "W: An error occurred during the signature verification"))
            or "index files failed to download" in ln]


def _apt_failure(tool: str, args: Sequence[str], result: subprocess.CompletedProcess[str]
                 ) -> PkgfarmError:
    """The project's error for a failed apt command, carrying apt's own message."""
    text = (result.stderr or "") + (result.stdout or "")
    problems = [ln.strip() for ln in text.splitlines()
                if ln.startswith(("E:", "Err:", "W:"))]
    message = "; ".join(problems[-5:]) or text.strip()[-500:] or f"exit status {result.returncode}"
    what = f"{tool} {' '.join(args)}"
    lowered = message.lower()
    if any(s in lowered for s in ("unable to locate", "unable to find", "no packages found",
                                  "can not find version", "can't find a source")):
        return NotFound(f"{what}: {message}")
    if any(s in lowered for s in ("failed to fetch", "could not resolve", "temporary failure",
                                  "could not connect", "connection failed", "timed out",
                                  "some index files failed")):
        return Unavailable(f"{what}: {message}")
    return PkgfarmError(f"{what} failed: {message}")


class AptState:
    """apt-get and apt-cache with a state folder of their own under ``root``.

    ``lines`` are one-line source entries (``deb`` or ``deb-src``). Creating the object writes
    the configuration; `update` fetches the indexes. Several processes may share one root:
    `update` takes the folder's lock exclusively, the other commands share it.
    """

    def __init__(self, root: Path, lines: Sequence[str],
                 architectures: Sequence[str] | None = None) -> None:
        self.root = Path(root).resolve()
        self.lines = list(lines)
        self.architectures = list(architectures or [host_arch()])
        for sub in ("etc/sources.list.d", "etc/preferences.d", "etc/apt.conf.d",
                    "state/lists/partial", "cache/archives/partial", "downloads"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        status = self.root / "state" / "status"
        if not status.exists():
            _write_if_changed(status, "")
        text = "".join(f"{line}\n" for line in self.lines)
        if _write_if_changed(self.root / "etc" / "sources.list", text):
            # Different sources: the lists fetched for the old ones say nothing of these.
            self._stamp.unlink(missing_ok=True)
        arches = " ".join(f'"{a}";' for a in self.architectures)
        self.conf = self.root / "apt.conf"
        _write_if_changed(
            self.conf,
            f'Dir::Etc::sourcelist "{self.root}/etc/sources.list";\n'
            f'Dir::Etc::sourceparts "{self.root}/etc/sources.list.d";\n'
            f'Dir::Etc::preferences "{self.root}/etc/preferences";\n'
            f'Dir::Etc::preferencesparts "{self.root}/etc/preferences.d";\n'
            f'Dir::Etc::parts "{self.root}/etc/apt.conf.d";\n'
            f'Dir::State "{self.root}/state";\n'
            f'Dir::State::status "{self.root}/state/status";\n'
            f'Dir::Cache "{self.root}/cache";\n'
            'Debug::NoLocking "1";\n'
            'APT::Sandbox::User "root";\n'
            f'APT::Architecture "{self.architectures[0]}";\n'
            f"APT::Architectures {{ {arches} }};\n"
            'Acquire::Languages "none";\n'
            'Acquire::Retries "2";\n'
        )

    @property
    def _stamp(self) -> Path:
        return self.root / "state" / "updated"

    def _locked(self, exclusive: bool) -> AbstractContextManager[None]:
        return file_lock(self.root / "lock", shared=not exclusive)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "APT_CONFIG": str(self.conf), "DEBIAN_FRONTEND": "noninteractive",
                "LC_ALL": "C.UTF-8"}

    def _call(self, tool: str, args: Sequence[str], cwd: Path | None,
              timeout: float) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run([tool, "-q", *args], cwd=cwd or self.root / "downloads",
                                    env=self.env, capture_output=True, text=True,
                                    timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"{tool} {' '.join(args)} did not finish within "
                              f"{timeout:.0f} s") from None
        except FileNotFoundError:
            raise PkgfarmError(f"{tool} is not installed") from None
        if result.returncode != 0:
            raise _apt_failure(tool, args, result)
        return result

    def run(self, *args: str, cwd: Path | None = None,
            timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        """apt-get ARGS with this state (in ``cwd``, default ``ROOT/downloads``)."""
        with self._locked(exclusive=False):
            return self._call("apt-get", args, cwd, timeout)

    def cache(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """apt-cache ARGS with this state."""
        with self._locked(exclusive=False):
            return self._call("apt-cache", args, None, timeout)

    def update(self, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """Fetch the indexes; Unavailable (with apt's words) when one could not be fetched."""
        with self._locked(exclusive=True):
            return self._update(timeout)

    def _update(self, timeout: float) -> subprocess.CompletedProcess[str]:
        result = self._call("apt-get", ["update"], None, timeout)
        bad = update_failures((result.stdout + result.stderr).splitlines())
        if bad:
            raise Unavailable("apt-get update: " + "; ".join(bad[-5:]))
        self._stamp.write_text(f"{time.time()}\n")
        return result

    def age(self) -> float | None:
        """Seconds since the last successful update, None if never."""
        try:
            return max(0.0, time.time() - self._stamp.stat().st_mtime)
        except FileNotFoundError:
            return None

    def update_if_older(self, max_age: float, timeout: float = 900) -> bool:
        """Update unless the last successful update is younger than ``max_age`` seconds.

        Returns whether it updated. Concurrent callers wait for one update and reuse it.
        """
        age = self.age()
        if age is not None and age < max_age:
            return False
        with self._locked(exclusive=True):
            age = self.age()
            if age is not None and age < max_age:
                return False
            self._update(timeout)
            return True

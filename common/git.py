"""The one way pkgfarm runs git: no prompts, no user configuration, a time limit, bytes or text.

Git sources of Debian packages are read by the master (to plan a build) and cloned by workers
(to build it); both call `run_git`, which raises `GitFailed` with git's own last words.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from common.errors import PkgfarmError


class GitFailed(PkgfarmError):
    """git could not do what was asked (or is not installed, or took too long)."""


def run_git(*args: str, cwd: Path | None = None, timeout: float = 300,
            home: Path | None = None) -> bytes:
    """``git ARGS`` in ``cwd``; its standard output. Any repository is accepted as safe (the
    farm reads repositories it did not make), nothing prompts, and the user's own git
    configuration is not read (``HOME`` is ``home`` or a folder that does not exist)."""
    if shutil.which("git") is None:
        raise GitFailed("git is not installed (apt-get install git)")
    env = {"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin", "LC_ALL": "C",
           "HOME": str(home or "/nonexistent"), "GIT_CONFIG_NOSYSTEM": "1"}
    try:
        result = subprocess.run(["git", "-c", "safe.directory=*", *args], cwd=cwd,
                                capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise GitFailed(f"git {args[0]} did not finish within {timeout:.0f} s") from None
    if result.returncode != 0:
        words = result.stderr.decode(errors="replace").strip().splitlines()
        raise GitFailed(f"git {' '.join(args[:1] + args[-1:])}: {' '.join(words[-3:])}")
    return result.stdout


def git_text(*args: str, cwd: Path | None = None, timeout: float = 300) -> str:
    return run_git(*args, cwd=cwd, timeout=timeout).decode(errors="replace")

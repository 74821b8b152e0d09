"""What the two kinds of build environment share about apt: reading its complaints, and
trusting the farm's own HTTPS repository through the farm's CA alone."""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence


def apt_problems(tail: Sequence[str]) -> str:
    """apt's own complaint, from the last lines it printed."""
    lines = [ln.strip() for ln in tail
             if ln.startswith(("E:", "Err:")) or "but it is not" in ln
             or "but it is a virtual" in ln or ln.strip().startswith("Depends:")]
    return "; ".join(dict.fromkeys(lines)) or "see the log"


def https_hosts(lines: Sequence[str]) -> list[str]:
    """The host names of the ``https://`` sources among one-line apt entries."""
    hosts = []
    for line in lines:
        for word in line.split():
            if word.startswith("https://"):
                host = urllib.parse.urlsplit(word).hostname
                if host and host not in hosts:
                    hosts.append(host)
    return hosts


def ca_settings(lines: Sequence[str], ca_file: str) -> list[str]:
    """apt settings that make the ``https://`` sources among ``lines`` (the farm's own
    repository) trusted through ``ca_file`` alone, host by host; other sources keep the
    system's CAs."""
    return [f"Acquire::https::{host}::CaInfo={ca_file}" for host in https_hosts(lines)]


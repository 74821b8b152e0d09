"""The folder where prometheus-client's multiprocess mode keeps each process's values.

prometheus-client chooses how it stores values when it is first imported, from
``PROMETHEUS_MULTIPROC_DIR``: so `master serve` calls `prepare` before anything imports it
(this module imports nothing of it), and every gunicorn process forked afterwards writes its
own files there, which ``GET /metrics`` adds up.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(data_dir: str | Path) -> Path:
    """Empty ``data_dir``/metrics (values of an earlier run would be added to this one's) and
    point this process and its children at it."""
    if "prometheus_client" in sys.modules:
        # Its values would stay per process, and each scrape would show one process's share.
        raise RuntimeError("prometheus_client was imported before master serve set "
                           f"{ENV}: import master.app, master.services and master.metrics "
                           "inside serve, after metricsdir.prepare")
    folder = Path(data_dir) / "metrics"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(mode=0o700, parents=True)
    os.environ[ENV] = str(folder)
    return folder


def process_exited(pid: int) -> None:
    """Gunicorn's child_exit hook: a dead process's live gauges no longer count."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)

"""A real Prometheus server (Debian's /usr/bin/prometheus) for tests: a throwaway config and
storage, a free loopback port, stopped by its PID."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.integration.farm import free_port, stop_process, wait_for

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


class Prometheus:
    def __init__(self, root: Path, target: str, *, auth: dict[str, Any] | None = None,
                 interval: str = "1s") -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        job: dict[str, Any] = {
            "job_name": "pkgfarm",
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "metrics_path": "/metrics",
            "static_configs": [{"targets": [target]}],
            **(auth or {}),
        }
        self.config = {"global": {"scrape_interval": interval,
                                  "evaluation_interval": interval},
                       "scrape_configs": [job]}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config))
        config.chmod(0o600)
        with open(self.root / "prometheus.log", "ab") as out:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}",
                 f"--storage.tsdb.path={self.root / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(self._ready, 60, f"prometheus on port {self.port}")

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError("prometheus exited:\n"
                               + (self.root / "prometheus.log").read_text()[-3000:])
        return requests.get(self.url + "/-/ready", timeout=2).status_code == 200

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now."""
        resp = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        resp.raise_for_status()
        body = resp.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The one value of ``expr`` (None when it has no sample)."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

"""A real S3-compatible HTTP server for tests: moto's server mode, in a process of its own.

    server = MotoServer(tmp_path / "moto")      # or MotoServer() for a temporary log folder
    server.start()                               # free port, waits until it answers
    server.create_bucket("pkgfarm")
    storage = S3Storage("pkgfarm", **server.storage_options())
    ...
    server.stop()                                # by its own PID

or ``with MotoServer() as server: ...``. The server keeps everything in memory; `reset` empties
it. Any access key is accepted; `ACCESS_KEY_ID` and `SECRET_ACCESS_KEY` are the ones to use.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

ACCESS_KEY_ID = "moto-test-key"
SECRET_ACCESS_KEY = "moto-test-secret"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    def __init__(self, workdir: Path | None = None, *, host: str = "127.0.0.1",
                 port: int | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="moto-"))
        self.host = host
        self.port = port or _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "moto.log"

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments of `master.storage.S3Storage` that reach this server."""
        return {"endpoint_url": self.endpoint_url, "region": REGION,
                "access_key_id": ACCESS_KEY_ID, "secret_access_key": SECRET_ACCESS_KEY}

    def settings(self, bucket: str, prefix: str = "", **extra: Any) -> dict[str, Any]:
        """The ``storage:`` section of a config file that uses this server."""
        return {"backend": "s3", "bucket": bucket, "prefix": prefix, **self.storage_options(),
                **extra}

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=self.workdir)
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                if requests.get(f"{self.endpoint_url}/moto-api/", timeout=2).ok:
                    return
            except requests.RequestException as exc:
                last = exc
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"moto server did not answer within {timeout:.0f} s "
                           f"(last: {last!r})")

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def client(self) -> Any:
        """A boto3 S3 client of this server (for a test's own set-up and checks)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION,
                            aws_access_key_id=ACCESS_KEY_ID,
                            aws_secret_access_key=SECRET_ACCESS_KEY,
                            config=Config(s3={"addressing_style": "path"}))

    def create_bucket(self, name: str) -> str:
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name

    def reset(self) -> None:
        """Forget every bucket and object."""
        requests.post(f"{self.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

"""The master's private Redis, used when the config names no broker_url.

One machine then runs the whole farm with nothing set up by hand: `master serve` starts a
redis-server that listens only on a unix socket under ``data_dir`` (no TCP port), keeps an
append-only file there, and stops it when the master stops. Workers on the same machine derive
the same socket path from the same config.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from common.errors import ConfigError

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: a session of its own (a Ctrl-C of the master's terminal is
    the master's to handle), and SIGTERM when the master dies, even by SIGKILL, so that a
    restarted master finds the socket free. The append-only file keeps the queue."""
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


class EmbeddedRedis:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = Path(socket_path)
        self.dir = self.socket_path.parent
        self.proc: subprocess.Popen[bytes] | None = None

    def _ping(self) -> bool:
        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket_path),
                                    socket_timeout=1).ping())
        except (redis.RedisError, OSError):
            return False

    def start(self, timeout: float = 15.0) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise ConfigError(
                "broker_url is not set, so the master runs its own Redis, but redis-server is "
                "not installed: run `apt-get install redis-server`, or set broker_url",
                key="broker_url")
        if len(str(self.socket_path)) > 100:
            raise ConfigError(f"master.data_dir is too long for a unix socket path "
                              f"({self.socket_path}); use a shorter one or set broker_url",
                              key="master.data_dir")
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists():
            if self._ping():
                raise ConfigError(f"a Redis already listens on {self.socket_path}: is another "
                                  "master running with this data_dir?", key="master.data_dir")
            self.socket_path.unlink()
        self.proc = subprocess.Popen(
            [exe, "--port", "0", "--unixsocket", str(self.socket_path), "--unixsocketperm", "770",
             "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "everysec",
             "--save", "", "--maxmemory-policy", "noeviction",
             "--logfile", str(self.dir / "redis.log")],
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(f"redis-server exited with {self.proc.returncode}; see "
                                  f"{self.dir / 'redis.log'}")
            if self._ping():
                log.info("private redis-server (pid %d) on %s", self.proc.pid, self.socket_path)
                return
            time.sleep(0.05)
        self.stop()
        raise ConfigError(f"redis-server did not answer on {self.socket_path} in {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

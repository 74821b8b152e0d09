"""A Docker engine of the tests' own, the images the compose recipes need, and compose projects.

The engine is Debian's dockerd started with a private data-root, exec-root and socket under a
temporary folder, with no default bridge, no iptables rules and no masquerading: compose
networks get bridges of their own that exist only while it runs, containers reach nothing
outside this machine, and published ports are bound to 127.0.0.1 by the tests. It is stopped
by its own PID, and its folder is removed afterwards. Nothing of the machine's own Docker (its
socket, its data, its client configuration) is used or touched.

No registry is reachable from here, so the base image is made locally: `mmdebstrap` makes a
Debian 12 minbase tarball once (cached under /var/cache/pkgfarm-tests/docker, or
$PKGFARM_TEST_DOCKER_CACHE, for a week), `docker import` turns it into `debian:bookworm-slim`,
and a stand-in for `redis:7` is built from it with Debian's redis-server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.integration.farm import REPO_ROOT, wait_for

CACHE = Path(os.environ.get("PKGFARM_TEST_DOCKER_CACHE", "/var/cache/pkgfarm-tests/docker"))
BASE_TARBALL = CACHE / "bookworm-minbase.tar"
BASE_MAX_AGE = 7 * 86400
BASE_IMAGE = "debian:bookworm-slim"
#: the address pool compose networks are given (inside this engine only)
ADDRESS_POOL = "base=10.213.128.0/17,size=24"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

#: What stands in for the official redis:7 image: Debian's redis-server (which has TLS), run
#: as the unprivileged user `redis` in /data like the official image, so the compose files'
#: `command:` lines and mounted files work unchanged.
REDIS_STAND_IN = f"""\
FROM {BASE_IMAGE}
RUN apt-get update \\
    && apt-get install -y --no-install-recommends redis-server redis-tools \\
    && apt-get clean && rm -rf /var/lib/apt/lists/*
RUN install -d -o redis -g redis -m 0750 /data
WORKDIR /data
VOLUME /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
"""


class EngineUnavailable(Exception):
    """dockerd cannot start on this machine at all (the reason is the message)."""


class DockerEngine:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.log = root / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("DOCKER_", "COMPOSE_"))}
        #: the environment every docker and docker-compose command here runs with
        self.env = {**base, "DOCKER_HOST": f"unix://{self.socket}",
                    "DOCKER_CONFIG": str(root / "client")}

    def start(self) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise EngineUnavailable("dockerd is not installed (apt-get install docker.io)")
        if os.geteuid() != 0:
            raise EngineUnavailable("dockerd needs root")
        for tool in ("docker", "docker-compose"):
            if shutil.which(tool) is None:
                raise EngineUnavailable(f"{tool} is not installed (run ./dev.sh setup)")
        (self.root / "client").mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [dockerd, "--bridge=none", "--iptables=false", "--ip-masq=false",
                 "--default-address-pool", ADDRESS_POOL,
                 "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                 "-H", f"unix://{self.socket}", "--pidfile", str(self.root / "docker.pid")],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        try:
            wait_for(lambda: self._ping() or self.proc is None or self.proc.poll() is not None,
                     60, "dockerd")
        except TimeoutError:
            self.stop()
            raise EngineUnavailable("dockerd did not answer within 60 s:\n"
                                    + self.log.read_text()[-2000:]) from None
        if self.proc.poll() is not None:
            tail = self.log.read_text()[-2000:]
            self.stop()
            raise EngineUnavailable(f"dockerd could not start:\n{tail}")

    def _ping(self) -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(self.socket))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in s.recv(4096).split(b"\r\n", 1)[0]

    def docker(self, *args: str, check: bool = True, timeout: float = 120,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["docker", *args], env=self.env, capture_output=True,
                                text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def stop(self) -> None:
        """Remove every container, stop dockerd by its PID, unmount what it left, remove all."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                ids = self.docker("ps", "-aq", timeout=30).stdout.split()
                if ids:
                    self.docker("rm", "-f", "-v", *ids, check=False, timeout=120)
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        for mount in reversed(mounts_under(self.root)):
            subprocess.run(["umount", mount], capture_output=True)
            if mount in mounts_under(self.root):
                subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def mounts_under(folder: Path) -> list[str]:
    """Mount points at or below ``folder``, in the order they were mounted."""
    prefix = str(folder.resolve())
    found = []
    with open("/proc/self/mountinfo") as table:
        for line in table:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


@contextlib.contextmanager
def docker_engine() -> Iterator[DockerEngine]:
    """A running engine in a fresh short-named folder under /tmp (socket paths must be short);
    raises EngineUnavailable where dockerd cannot start."""
    engine = DockerEngine(Path(tempfile.mkdtemp(prefix="pkgfarm-dk-", dir="/tmp")))
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()


# -- images ------------------------------------------------------------------------------------


def base_tarball(log: Path) -> Path:
    """The cached Debian 12 minbase tarball, made with mmdebstrap when missing or too old."""
    if BASE_TARBALL.is_file() and time.time() - BASE_TARBALL.stat().st_mtime < BASE_MAX_AGE:
        return BASE_TARBALL
    if shutil.which("mmdebstrap") is None:
        raise AssertionError("mmdebstrap is missing (run ./dev.sh setup)")
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = BASE_TARBALL.with_suffix(f".{os.getpid()}.partial")
    with open(log, "ab") as out:
        subprocess.run(["mmdebstrap", "--variant=minbase", "--format=tar", "bookworm", str(partial),
                        "http://deb.debian.org/debian"], stdout=out, stderr=subprocess.STDOUT,
                       check=True, timeout=600)
    partial.rename(BASE_TARBALL)
    return BASE_TARBALL


def import_base(engine: DockerEngine) -> None:
    with open(base_tarball(engine.root / "mmdebstrap.log"), "rb") as tarball:
        subprocess.run(["docker", "import", "--change", 'CMD ["bash"]', "-", BASE_IMAGE],
                       stdin=tarball, env=engine.env, check=True, capture_output=True,
                       timeout=300)


def build_redis_stand_in(engine: DockerEngine) -> None:
    engine.docker("build", "-q", "--network", "host", "-t", "redis:7", "-",
                  input=REDIS_STAND_IN, timeout=600)


def source_copy(dest: Path) -> Path:
    """The repository's files as git knows them (tracked, plus new files not ignored), copied
    to ``dest``, with this machine's CA bundle in docker/ca-certificates/ so that the image
    build trusts what this machine trusts (a TLS-intercepting proxy's CA, for one)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if not source.is_file():  # deleted in the work tree but still in git's index
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    if HOST_CA_BUNDLE.is_file():
        shutil.copy(HOST_CA_BUNDLE, dest / "docker/ca-certificates/host-bundle.crt")
    return dest


# -- compose -----------------------------------------------------------------------------------


class ComposeProject:
    """One compose project on the engine: `docker-compose -p NAME -f FILE…`, with its own
    environment (the deployer's variables)."""

    def __init__(self, engine: DockerEngine, name: str, files: Sequence[Path],
                 env: dict[str, str]) -> None:
        self.engine, self.name, self.files = engine, name, list(files)
        self.env = {**engine.env, **env}

    def run(self, *args: str, check: bool = True, timeout: float = 300
            ) -> subprocess.CompletedProcess[str]:
        argv = ["docker-compose", "--ansi", "never", "-p", self.name]
        for f in self.files:
            argv += ["-f", str(f)]
        result = subprocess.run([*argv, *args], env=self.env, capture_output=True, text=True,
                                timeout=timeout, cwd=self.files[0].parent)
        if check and result.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} failed "
                                 f"({result.returncode}):\n{result.stdout[-3000:]}\n"
                                 f"{result.stderr[-3000:]}")
        return result

    def containers(self, service: str, *, all_states: bool = False) -> list[str]:
        """Ids of this project's containers of ``service`` (running ones unless all_states)."""
        args = ["ps", "-q", "--no-trunc",
                "--filter", f"label=com.docker.compose.project={self.name}",
                "--filter", f"label=com.docker.compose.service={service}"]
        if all_states:
            args.insert(1, "-a")
        return self.engine.docker(*args).stdout.split()

    def inspect(self, container: str, template: str) -> str:
        return self.engine.docker("inspect", "-f", template, container).stdout.strip()

    def network(self) -> str:
        return f"{self.name}_default"

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, volumes and networks of this project that still exist."""
        label = f"label=com.docker.compose.project={self.name}"
        return {
            "containers": self.engine.docker("ps", "-aq", "--filter", label).stdout.split(),
            "volumes": self.engine.docker("volume", "ls", "-q", "--filter", label).stdout.split(),
            "networks": self.engine.docker("network", "ls", "-q", "--filter",
                                           label).stdout.split(),
        }

    def logs(self) -> str:
        return self.run("logs", "--no-color", "--tail", "60", check=False, timeout=60).stdout

    def down(self) -> None:
        self.run("down", "-v", "--remove-orphans", "-t", "30", timeout=300)


def run_in_network(engine: DockerEngine, network: str, image: str, argv: Sequence[str],
                   volumes: Sequence[str] = (), env: dict[str, str] | None = None
                   ) -> subprocess.CompletedProcess[str]:
    """A throwaway container on ``network`` running ``argv`` (check=False: callers look at
    what it said)."""
    args: list[Any] = ["run", "--rm", "--network", network]
    for volume in volumes:
        args += ["-v", volume]
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    return engine.docker(*args, image, *argv, check=False, timeout=60)

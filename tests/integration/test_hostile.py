"""Build scripts as an attacker writes them, against real workers in each way a worker builds.

One farm, three workers, one architecture tag each, so that every hostile definition (built for
all three architectures) runs once in each mode:

- amd64: host mode, confined by bubblewrap;
- arm64: a clean root (YAML architectures are labels, so arm64 builds on this machine);
- i386: host mode with ``sandbox: none`` (as the compose recipes may choose).

Each trick is checked for what the attacker would get (nothing: the secret is in no log and in
no archive), for what happened to the host (nothing), and for the farm going on (the next
build of the same worker succeeds).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.farm import Master, RedisServer, Worker, free_port, running, write_config

BASES = Path(os.environ.get("PKGFARM_TEST_BASES", "/var/cache/pkgfarm-tests/bases"))
MODES = {"amd64": "host+bwrap", "arm64": "clean", "i386": "host+none"}
BUILD_UID = 64999

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="build users need a root worker")


def definition(name: str, script: str, **extra: Any) -> str:
    data = {"package": {"name": name, "version": "1.0", "release": "1",
                        "architecture": list(MODES), "description": f"hostile {name}",
                        "maintainer": "pkgfarm tests <tests@example.org>"},
            "build": textwrap.dedent(script), **extra}
    return yaml.safe_dump(data, sort_keys=False)


class HostileFarm:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.secret_dir = root / "secret"
        self.secret_dir.mkdir(mode=0o700)
        self.secret = f"pkgfarm-secret-{secrets.token_hex(8)}"
        (self.secret_dir / "secret.txt").write_text(self.secret + "\n")
        self.target = root / "target"  # a host folder a script tries to write through a link
        self.target.mkdir()
        self.target.chmod(0o755)
        self.sock_path = Path("/var/tmp") / f"pkgfarm-test-{secrets.token_hex(4)}.sock"
        # Without a sandbox the build user walks the real path to its area: the work folders
        # live where anyone may pass (pytest's own folders are closed).
        self.work = Path("/var/tmp") / f"pkgfarm-tests-hostile-{secrets.token_hex(4)}"
        self.packages = root / "packages"
        self.packages.mkdir()
        self.redis = RedisServer(root / "redis")
        self.port = free_port()
        self.master: Master | None = None
        self.workers: list[Worker] = []

    def config(self, name: str, worker: dict[str, Any]) -> Path:
        path = write_config(
            self.root / f"{name}.yaml", data_dir=self.root / "data", port=self.port,
            broker_url=self.redis.url, package_paths=[self.packages],
            architectures=tuple(MODES),
            extra_worker={"work_dir": str(self.work / f"work-{name}"),
                          "limits": {"memory": "512M", "processes": 256, "disk": "64M"},
                          **worker})
        path.chmod(0o600)
        return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileFarm]:
    farm = HostileFarm(tmp_path_factory.mktemp("hostile"))
    master_config = farm.config("master", {})
    farm.master = Master(master_config, farm.port, farm.root / "master.log")
    modes = {
        "amd64": {"environment": "host", "sandbox": "bwrap"},
        "arm64": {"environment": "clean", "base_dir": str(BASES)},
        "i386": {"environment": "host", "sandbox": "none"},
    }
    workers = [Worker(farm.config(arch, modes[arch]), f"w-{arch}", [arch],
                      farm.root / f"w-{arch}.log") for arch in MODES]
    # A unix socket anyone may connect to, in a place of the machine's own.
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(farm.sock_path))
    farm.sock_path.chmod(0o777)
    listener.listen(5)
    try:
        with running(farm.redis, farm.master, *workers):
            yield farm
    finally:
        listener.close()
        farm.sock_path.unlink(missing_ok=True)
        shutil.rmtree(farm.work, ignore_errors=True)


def build(farm: HostileFarm, name: str, text: str) -> dict[str, dict[str, Any]]:
    (farm.packages / f"{name}.yaml").write_text(text)
    assert farm.master is not None
    result = farm.master.wait_build(farm.master.submit([name]), timeout=300)
    return {job["arch"]: job for job in result["jobs"]}


def log_of(farm: HostileFarm, build_id: int, name: str, arch: str) -> str:
    assert farm.master is not None
    return farm.master.api("GET", f"/api/v1/builds/{build_id}/packages/{name}/log",
                           params={"arch": arch}).text


def unpacked(farm: HostileFarm, name: str, arch: str) -> Path:
    """The files of one published archive, unpacked into a folder of their own."""
    deb = next((farm.root / "data/repo/pool").rglob(f"{name}_1.0-1_{arch}.deb"))
    dest = farm.root / "unpacked" / f"{name}-{arch}"
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    return dest


def build_user_processes() -> list[str]:
    """Processes of any build user still running (zombies, dead and waiting for the machine's
    init to collect them, do not run)."""
    users = ",".join(str(BUILD_UID + i) for i in range(64))
    result = subprocess.run(["ps", "-u", users, "-o", "pid=,stat=,user=,args="],
                            capture_output=True, text=True)
    return [line for line in result.stdout.splitlines()
            if line.strip() and not line.split()[1].startswith("Z")]


def everything_published(farm: HostileFarm) -> bytes:
    """The bytes of every archive the repository holds, unpacked (to search for secrets)."""
    data = b""
    for deb in (farm.root / "data" / "repo" / "pool").rglob("*.deb"):
        out = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                             check=True).stdout
        data += out
    return data


def assert_no_secret(farm: HostileFarm, jobs: dict[str, dict[str, Any]], name: str) -> None:
    for arch, job in jobs.items():
        build_id = int(job["log_url"].split("/builds/")[1].split("/")[0])
        assert farm.secret not in log_of(farm, build_id, name, arch), MODES[arch]
    assert farm.secret.encode() not in everything_published(farm)


def assert_farm_goes_on(farm: HostileFarm, tag: str) -> None:
    jobs = build(farm, f"ok-after-{tag}", definition(f"ok-after-{tag}", """\
        mkdir -p "$DESTDIR/usr/share/ok"
        echo fine > "$DESTDIR/usr/share/ok/marker"
    """))
    assert {a: j["status"] for a, j in jobs.items()} == dict.fromkeys(MODES, "success")


def test_log_replaced_by_a_link_to_a_secret(hostile: HostileFarm) -> None:
    secret = hostile.secret_dir / "secret.txt"
    jobs = build(hostile, "evil-log", definition("evil-log", f"""\
        for name in build.log ../build.log ../../build.log ../../../build.log; do
            ln -sf {secret} "$HOME/$name" 2>/dev/null && echo "linked $name" || true
            ln -sf {secret} "$PWD/$name" 2>/dev/null && echo "linked $name" || true
        done
        echo written > "$HOME/../../worker-file" 2>/dev/null && echo "wrote beside" || true
        cat {secret} 2>&1 || true
        mkdir -p "$DESTDIR/usr/share/evil-log"
        cp {secret} "$DESTDIR/usr/share/evil-log/" 2>/dev/null || true
    """))
    for arch, job in jobs.items():
        assert job["status"] == "success", (MODES[arch], job)
    assert_no_secret(hostile, jobs, "evil-log")
    assert_farm_goes_on(hostile, "log")


def test_destdir_replaced_by_a_link_to_a_host_folder(hostile: HostileFarm) -> None:
    jobs = build(hostile, "evil-destdir", definition("evil-destdir", f"""\
        rm -rf "$DESTDIR"
        ln -s {hostile.target} "$DESTDIR"
    """))
    for arch, job in jobs.items():
        assert job["status"] == "failed", (MODES[arch], job)
        assert "not a folder" in job["error"], job["error"]
    assert list(hostile.target.iterdir()) == []
    assert oct(hostile.target.stat().st_mode & 0o777) == "0o755"
    assert_farm_goes_on(hostile, "destdir")


def test_build_runs_unprivileged_and_cannot_read_root_files(hostile: HostileFarm) -> None:
    config = hostile.root / "amd64.yaml"
    jobs = build(hostile, "evil-read", definition("evil-read", f"""\
        mkdir -p "$DESTDIR/usr/share/evil-read"
        id -u > "$DESTDIR/usr/share/evil-read/uid"
        echo "$USER $LOGNAME $HOME" > "$DESTDIR/usr/share/evil-read/who"
        for f in /etc/shadow {config} {hostile.root / "master.yaml"}; do
            cat "$f" >> "$DESTDIR/usr/share/evil-read/stolen" 2>/dev/null || true
        done
        env >> "$DESTDIR/usr/share/evil-read/stolen"
        for f in /proc/[0-9]*/environ; do
            cat "$f" >> "$DESTDIR/usr/share/evil-read/stolen" 2>/dev/null || true
        done
    """))
    for arch, job in jobs.items():
        assert job["status"] == "success", (MODES[arch], job)
        files = unpacked(hostile, "evil-read", arch) / "usr/share/evil-read"
        uid = int((files / "uid").read_text())
        assert BUILD_UID <= uid < BUILD_UID + 64, (MODES[arch], uid)  # one of the build users
        user, logname, home = (files / "who").read_text().split()
        assert (user, logname) == ("pkgfarm-build", "pkgfarm-build") and "/area/home" in home
        stolen = (files / "stolen").read_bytes()
        for forbidden in (b"root:", b"test-password", b"password_hash", b"PKGFARM_WORKER",
                          b"scrypt:", b"pbkdf2:"):
            assert forbidden not in stolen, (MODES[arch], forbidden)
        # The archive's files still belong to root, as fakeroot would make them.
        deb = next((hostile.root / "data/repo/pool").rglob(f"evil-read_1.0-1_{arch}.deb"))
        listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                                 check=True).stdout
        assert all(" root/root " in line for line in listing.splitlines()), listing
    assert build_user_processes() == []
    assert_farm_goes_on(hostile, "read")


def test_build_is_offline(hostile: HostileFarm) -> None:
    redis_port = hostile.redis.port
    jobs = build(hostile, "evil-net", definition("evil-net", f"""\
        mkdir -p "$DESTDIR/usr/share/evil-net"
        out="$DESTDIR/usr/share/evil-net/reached"
        : > "$out"
        for port in {hostile.port} {redis_port}; do
            if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then echo "tcp $port" >> "$out"; fi
        done
        sock={hostile.sock_path}
        if perl -MIO::Socket::UNIX -e 'exit !IO::Socket::UNIX->new(Peer => $ARGV[0])' \\
                "$sock" 2>/dev/null; then
            echo "unix" >> "$out"
        fi
    """))
    for arch, job in jobs.items():
        assert job["status"] == "success", (MODES[arch], job)
    for arch in ("amd64", "arm64"):  # bubblewrap and clean roots are offline
        reached = unpacked(hostile, "evil-net", arch) / "usr/share/evil-net/reached"
        assert reached.read_text() == "", (MODES[arch], reached.read_text())
    # Without a sandbox the network is the machine's (the compose recipes' containers are
    # their own network); the socket of another user is still no use to the build user.


def test_limits_stop_bombs_hogs_and_fillers(hostile: HostileFarm) -> None:
    cases = {
        "evil-fork": """\
            bomb() { bomb | bomb & }
            bomb
            sleep 2
            for i in $(seq 1 50); do /bin/true; done
            wait
        """,
        "evil-memory": """\
            perl -e '$x = "a" x (2 * 1024 * 1024 * 1024); print length $x'
        """,
        "evil-bigfile": """\
            dd if=/dev/zero of="$DESTDIR/big" bs=1M count=200
        """,
        "evil-disk": """\
            for i in $(seq 1 40); do
                dd if=/dev/zero of="$DESTDIR/f$i" bs=1M count=4 2>/dev/null
            done
            sleep 6
        """,
    }
    for name, script in cases.items():
        jobs = build(hostile, name, definition(name, script))
        for arch, job in jobs.items():
            assert job["status"] == "failed", (name, MODES[arch], job)
        assert build_user_processes() == [], name
    assert_farm_goes_on(hostile, "limits")


def test_network_on_request(hostile: HostileFarm) -> None:
    jobs = build(hostile, "asks-net", definition("asks-net", f"""\
        mkdir -p "$DESTDIR/usr/share/asks-net"
        (exec 3<>/dev/tcp/127.0.0.1/{hostile.port}) && echo reached > \\
            "$DESTDIR/usr/share/asks-net/r"
    """, build_network=True))
    for arch, job in jobs.items():
        assert job["status"] == "success", (MODES[arch], job)
        assert (unpacked(hostile, "asks-net", arch) / "usr/share/asks-net/r").read_text() == \
            "reached\n", MODES[arch]

"""Build scripts as an attacker writes them, against real workers in each way a worker builds.

One farm, three workers, one architecture tag each, so that every hostile definition (built for
all three architectures) runs once in each mode:

- amd64: host mode, confined by bubblewrap;
- arm64: a clean root (YAML architectures are labels, so arm64 builds on this machine);
- i386: host mode with ``sandbox: none`` (as the compose recipes may choose).

Each trick is checked for what the attacker would get (nothing: the secret is in no log and in
no archive), for what happened to the host (nothing), and for the farm going on (the next
build of the same worker succeeds). The farm serves deb, rpm and pacman; the definitions here
are made as deb only, but for the tricks every format shares.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import stat
import subprocess
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.farm import Master, Worker, free_port, running, write_config
from worker.environment.processes import LOG_OUTPUT_LIMIT

BASES = Path(os.environ.get("PKGFARM_TEST_BASES", "/var/cache/pkgfarm-tests/bases"))
MODES = {"amd64": "host+bwrap", "arm64": "clean", "i386": "host+none"}
#: The farm's build users: a range of its own, so that the builds of other farms on this
#: machine (other tests) are not taken for its own.
BUILD_UID = 66000
FORMATS = ["deb", "rpm", "pacman"]
MiB = 2**20

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="build users need a root worker")


def definition(name: str, script: str, formats: list[str] | None = None, **extra: Any) -> str:
    data = {"package": {"name": name, "version": "1.0", "release": "1",
                        "architecture": list(MODES), "description": f"hostile {name}",
                        "maintainer": "pkgfarm tests <tests@example.org>",
                        "formats": formats or ["deb"]},
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
        # Unix sockets anyone may connect to, in places of the machine's own: a folder a
        # sandbox binds read-only (/opt), and ones it does not bind (/run, /var/tmp).
        tag = secrets.token_hex(4)
        self.opt_dir = Path("/opt") / f"pkgfarm-tests-{tag}"
        self.sockets = [Path("/var/tmp") / f"pkgfarm-test-{tag}.sock",
                        Path("/run") / f"pkgfarm-test-{tag}.sock", self.opt_dir / "probe.sock"]
        # Without a sandbox the build user walks the real path to its area: the work folders
        # live where anyone may pass (pytest's own folders are closed).
        self.work = Path("/var/tmp") / f"pkgfarm-tests-hostile-{secrets.token_hex(4)}"
        self.packages = root / "packages"
        self.packages.mkdir()
        self.port = free_port()
        self.master: Master | None = None
        self.workers: list[Worker] = []

    @property
    def broker_socket(self) -> Path:
        """The master's private Redis (no broker_url: it listens only on this socket)."""
        return self.root / "data" / "redis" / "redis.sock"

    def config(self, name: str, worker: dict[str, Any]) -> Path:
        path = write_config(
            self.root / f"{name}.yaml", data_dir=self.root / "data", port=self.port,
            broker_url=None, package_paths=[self.packages],
            architectures=tuple(MODES), extra={"repository": {
                "suite": "stable", "component": "main", "architectures": list(MODES),
                "formats": FORMATS}},
            extra_worker={"work_dir": str(self.work / f"work-{name}"), "build_uid": BUILD_UID,
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
    listeners = []
    try:
        if Path("/opt").is_dir():
            farm.opt_dir.mkdir()
        for path in farm.sockets:
            if path.parent.is_dir():
                listener = socket.socket(socket.AF_UNIX)
                listener.bind(str(path))
                path.chmod(0o777)
                listener.listen(5)
                listeners.append(listener)
        with running(farm.master, *workers):
            yield farm
    finally:
        for listener in listeners:
            listener.close()
        for path in farm.sockets:
            path.unlink(missing_ok=True)
        shutil.rmtree(farm.opt_dir, ignore_errors=True)
        shutil.rmtree(farm.work, ignore_errors=True)


def build(farm: HostileFarm, name: str, text: str) -> dict[str, dict[str, Any]]:
    """Build one definition made as deb only: its jobs by architecture."""
    return {arch: job for (_, arch), job in build_set(farm, {name: text}).items()}


def build_set(farm: HostileFarm, texts: dict[str, str]) -> dict[tuple[str, str], dict[str, Any]]:
    """Build several definitions (deb only) in one build: their jobs by (name, arch)."""
    jobs = build_jobs(farm, texts)
    assert {job["format"] for job in jobs} == {"deb"}
    return {(job["package"], job["arch"]): job for job in jobs}


def build_jobs(farm: HostileFarm, texts: dict[str, str]) -> list[dict[str, Any]]:
    for name, text in texts.items():
        (farm.packages / f"{name}.yaml").write_text(text)
    assert farm.master is not None
    result = farm.master.wait_build(farm.master.submit(list(texts)), timeout=300)
    return list(result["jobs"])


class Highest(threading.Thread):
    """The highest value ``measure`` gives while a test's builds run (polled)."""

    def __init__(self, measure: Callable[[], int]) -> None:
        super().__init__(daemon=True)
        self.measure, self.value = measure, 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.1):
            self.value = max(self.value, self.measure())

    def __enter__(self) -> Highest:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.join()


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
        assert job["status"] == "success", (MODES[arch], job["error"])
    assert_no_secret(hostile, jobs, "evil-log")
    assert_farm_goes_on(hostile, "log")


def test_destdir_replaced_by_a_link_to_a_host_folder(hostile: HostileFarm) -> None:
    # Made in every format: each takes $DESTDIR out of the area the same way before packing.
    name = "evil-destdir"
    jobs = build_jobs(hostile, {name: definition(name, f"""\
        rm -rf "$DESTDIR"
        ln -s {hostile.target} "$DESTDIR"
    """, formats=FORMATS)})
    assert {(job["arch"], job["format"]) for job in jobs} == {
        (arch, fmt) for arch in MODES for fmt in FORMATS}
    for job in jobs:
        assert job["status"] == "failed", (MODES[job["arch"]], job["format"], job)
        assert "not a folder" in job["error"], job["error"]
    assert list(hostile.target.iterdir()) == []
    assert oct(hostile.target.stat().st_mode & 0o777) == "0o755"
    assert_farm_goes_on(hostile, "destdir")


def test_output_folder_is_out_of_the_scripts_reach(hostile: HostileFarm) -> None:
    # The worker packs into pack/out beside the area (the build's private folder), after the
    # script ran: a script that puts a link there first would have the archive written, and
    # its folder made and chmodded, where the link points.
    name = "evil-outdir"
    jobs = build(hostile, name, definition(name, f"""\
        # Its own area first (links there are the script's business, and must lead nowhere),
        # then the private folder above it, which it must not be able to change.
        for pack in "$DESTDIR/../pack" "$DESTDIR/../../pack" "$HOME/../../pack"; do
            case "$pack" in */../../*) mark=LINKED;; *) mark=area;; esac
            if ln -s {hostile.target} "$pack" 2>/dev/null; then echo "$mark pack"; fi
            if mkdir -p "$pack" 2>/dev/null && ln -s {hostile.target} "$pack/out" 2>/dev/null
            then echo "$mark out"; fi
        done
        mkdir -p "$DESTDIR/usr/share/{name}"
        echo packed > "$DESTDIR/usr/share/{name}/marker"
    """))
    for arch, job in jobs.items():
        assert job["status"] == "success", (MODES[arch], job["error"])
        build_id = int(job["log_url"].split("/builds/")[1].split("/")[0])
        assert "LINKED" not in log_of(hostile, build_id, name, arch), MODES[arch]
        assert (unpacked(hostile, name, arch) / f"usr/share/{name}/marker").read_text() == \
            "packed\n", MODES[arch]
    assert list(hostile.target.iterdir()) == []
    assert oct(hostile.target.stat().st_mode & 0o777) == "0o755"


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
        assert job["status"] == "success", (MODES[arch], job["error"])
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
    jobs = build(hostile, "evil-net", definition("evil-net", f"""\
        mkdir -p "$DESTDIR/usr/share/evil-net"
        out="$DESTDIR/usr/share/evil-net/reached"
        : > "$out"
        if (exec 3<>/dev/tcp/127.0.0.1/{hostile.port}) 2>/dev/null; then
            echo "tcp {hostile.port}" >> "$out"
        fi
        connect() {{
            perl -MIO::Socket::UNIX -e 'exit !IO::Socket::UNIX->new(Peer => $ARGV[0])' \
                "$1" 2>/dev/null
        }}
        # The master's private Redis, the sockets put where the machine keeps its own, and
        # every other socket the build can find.
        found=""
        if [ "$PKGFARM_ARCH" != i386 ]; then  # (not the machine's own sockets, unsandboxed)
            found=$(find /run /var/run /opt /etc /tmp /var/tmp /dev/shm -xdev -type s \\
                    2>/dev/null || true)
        fi
        for sock in {hostile.broker_socket} {" ".join(map(str, hostile.sockets))} $found; do
            if connect "$sock"; then echo "unix $sock" >> "$out"; fi
        done
    """))
    for arch, job in jobs.items():
        assert job["status"] == "success", (MODES[arch], job["error"])
    for arch in ("amd64", "arm64"):  # bubblewrap and clean roots are offline
        reached = unpacked(hostile, "evil-net", arch) / "usr/share/evil-net/reached"
        assert reached.read_text() == "", (MODES[arch], reached.read_text())
    # Without a sandbox the network, and the sockets anyone may use, are the machine's (the
    # compose recipes' containers are their own network); the master's private Redis (mode
    # 0770, root's) is still no use to the build user.
    reached = unpacked(hostile, "evil-net", "i386") / "usr/share/evil-net/reached"
    assert str(hostile.broker_socket) not in reached.read_text()
    assert os.path.exists(hostile.broker_socket)  # it was there to be tried


def test_limits_stop_bombs_hogs_and_fillers(hostile: HostileFarm) -> None:
    # Each case and the limit its failure must name (the hostile workers allow 256
    # processes, 512 MiB of memory and 64 MiB of disk per build).
    cases = {
        "evil-fork": ("processes", """\
            bomb() { bomb | bomb & }
            bomb
            sleep 2
            for i in $(seq 1 50); do /bin/true; done
            wait
        """),
        "evil-memory": ("memory", """\
            perl -e '$x = "a" x (2 * 1024 * 1024 * 1024); print length $x'
        """),
        # Four processes of about 200 MiB each: each under the limit of a process, together
        # over the build's.
        "evil-hogs": ("memory", """\
            for i in 1 2 3 4; do
                perl -e '$x = "a" x (100 * 1024 * 1024); sleep 30' &
            done
            wait
        """),
        "evil-bigfile": ("disk", """\
            dd if=/dev/zero of="$DESTDIR/big" bs=1M count=200
        """),
        "evil-disk": ("disk", """\
            for i in $(seq 1 40); do
                dd if=/dev/zero of="$DESTDIR/f$i" bs=1M count=4 2>/dev/null
            done
            sleep 6
        """),
        "evil-tmp": ("disk", """\
            for i in $(seq 1 40); do dd if=/dev/zero of=/tmp/f$i bs=1M count=4; done
            sleep 6
        """),
        "evil-vartmp": ("disk", """\
            for i in $(seq 1 40); do dd if=/dev/zero of=/var/tmp/f$i bs=1M count=4; done
            sleep 6
        """),
        # The script's own process moves to a mount namespace of its own with empty folders;
        # then a process it left behind fills the real /tmp (40 MiB) and its area (30 MiB).
        "evil-hidetmp": ("disk", """\
            ( sleep 1
              dd if=/dev/zero of=/tmp/hide-$$ bs=1M count=40 2>/dev/null
              dd if=/dev/zero of="$DESTDIR/hide" bs=1M count=30 2>/dev/null
              sleep 10 ) &
            exec unshare -Urm sh -c 'mount -t tmpfs none /tmp; mount -t tmpfs none /var/tmp
                                     sleep 12'
        """),
    }
    clean_root_files = Highest(lambda: clean_roots_usage(hostile))
    with clean_root_files:
        jobs = build_set(hostile, {name: definition(name, script)
                                   for name, (_, script) in cases.items()})
    for (name, arch), job in jobs.items():
        limit = cases[name][0]
        assert job["status"] == "failed", (name, MODES[arch], job)
        assert f"{limit} limit" in job["error"], (name, MODES[arch], job["error"])
    assert build_user_processes() == []
    # Nothing a build step wrote reached a clean root's files on the worker's disk (its
    # /var/tmp is in memory, the rest of the root read-only to it).
    assert clean_root_files.value < 1 * MiB, clean_root_files.value
    # Nothing of the build users is left in the machine's shared folders.
    for folder in (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")):
        left = [p for p in folder.iterdir()
                if BUILD_UID <= p.lstat().st_uid < BUILD_UID + 64]
        assert left == [], left
    assert_farm_goes_on(hostile, "limits")


def clean_roots_usage(farm: HostileFarm) -> int:
    """Bytes the files the clean worker's roots gained hold (their overlays' upper layers,
    without what pkgfarm writes there itself: /etc), while roots come and go."""
    total = 0
    for upper in (farm.work / "work-arm64").glob("job*/.pkgfarm-root/upper"):
        for folder, _, files in os.walk(upper):  # (what vanishes meanwhile is skipped)
            if Path(folder).relative_to(upper).parts[:1] == ("etc",):
                continue
            for name in files:
                try:
                    st = os.lstat(os.path.join(folder, name))
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    total += st.st_blocks * 512
    return total


def test_an_output_flood_is_cut_in_the_log_and_the_build_goes_on(hostile: HostileFarm) -> None:
    flood = 3 * LOG_OUTPUT_LIMIT

    def worker_logs() -> int:
        sizes = []
        for path in hostile.work.glob("work-*/job*/build.log"):
            try:
                sizes.append(path.stat().st_size)
            except OSError:
                continue
        return max(sizes, default=0)

    with Highest(worker_logs) as highest:
        jobs = build(hostile, "evil-flood", definition("evil-flood", f"""\
            yes "pkgfarm flood" | head -c {flood}
            mkdir -p "$DESTDIR/usr/share/evil-flood"
            echo done > "$DESTDIR/usr/share/evil-flood/marker"
        """))
    for arch, job in jobs.items():
        assert job["status"] == "success", (MODES[arch], job["error"])
        build_id = int(job["log_url"].split("/builds/")[1].split("/")[0])
        text = log_of(hostile, build_id, "evil-flood", arch)
        assert text.count("reached the log's limit of 32 MiB") == 1, MODES[arch]
        head, _, rest = text.partition("reached the log's limit")
        assert LOG_OUTPUT_LIMIT <= len(head.encode()) < LOG_OUTPUT_LIMIT + MiB
        # The worker's own lines after the cut are kept.
        assert "built evil-flood_1.0-1_" in rest, MODES[arch]
    # The worker's disk held no more than the cap (and the lines around it).
    assert LOG_OUTPUT_LIMIT <= highest.value < LOG_OUTPUT_LIMIT + MiB, highest.value
    assert_farm_goes_on(hostile, "flood")


def test_network_on_request(hostile: HostileFarm) -> None:
    jobs = build(hostile, "asks-net", definition("asks-net", f"""\
        mkdir -p "$DESTDIR/usr/share/asks-net"
        (exec 3<>/dev/tcp/127.0.0.1/{hostile.port}) && echo reached > \\
            "$DESTDIR/usr/share/asks-net/r"
    """, build_network=True))
    for arch, job in jobs.items():
        assert job["status"] == "success", (MODES[arch], job["error"])
        assert (unpacked(hostile, "asks-net", arch) / "usr/share/asks-net/r").read_text() == \
            "reached\n", MODES[arch]

"""Real parts for integration tests: redis-server, the master under gunicorn, workers, apt.

Every process is started here and stopped by its own PID; every wait has a ceiling.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests
import yaml
from werkzeug.security import generate_password_hash

BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_PACKAGES = Path(__file__).resolve().parent / "packages"

PASSWORD = "test-password"
USERS = {
    "admin": ["admin"],
    "worker": ["upload", "build"],
    "worker2": ["upload"],
    "reader": ["read"],
    "builder": ["build"],
}
# Hashing is deliberately slow; one hash serves every user of every test run.
_HASH = generate_password_hash(PASSWORD, method="pbkdf2:sha256:20000")


def make_ca(folder: Path, name: str = "pkgfarm test CA",
            hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate it signed for ``hosts``, made with openssl:
    (CA certificate, server certificate, server key)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = folder / "ca.key", folder / "ca.crt"
    key, csr, crt = folder / "server.key", folder / "server.csr", folder / "server.crt"

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            f"/CN={name}", "-keyout", str(ca_key), "-out", str(ca_crt))
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={hosts[0]}",
            "-keyout", str(key), "-out", str(csr))
    names = ",".join(("IP:" if h.replace(".", "").isdigit() else "DNS:") + h for h in hosts)
    ext = folder / "server.ext"
    ext.write_text(f"subjectAltName={names}\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(crt))
    return ca_crt, crt, key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # keep polling; report the last problem on timeout
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM,
                 timeout: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class JsonLines(threading.Thread):
    """The JSON lines a command prints (``proc``, text mode, stdout piped), read as they come
    into ``lines``; `close` after the command ended."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.start()

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def close(self) -> None:
        self.join(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


class RedisServer:
    def __init__(self, workdir: Path, *, host: str = "127.0.0.1") -> None:
        self.workdir = workdir
        self.host = host
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Protected mode refuses every client that is not on loopback; a test that binds
        # another (private, test-made) address turns it off.
        protected = [] if self.host == "127.0.0.1" else ["--protected-mode", "no"]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", self.host, *protected,
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
             "--logfile", str(self.workdir / "redis.log")],
            stdin=subprocess.DEVNULL,
        )
        wait_for(self._ping, 10, "redis-server")

    def _ping(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig)

    def restart_empty(self) -> None:
        """Kill this redis-server and start a fresh one on the same port: all data is lost."""
        self.stop(signal.SIGKILL)
        self.start()


def write_config(path: Path, *, data_dir: Path, port: int, broker_url: str | None,
                 package_paths: list[Path], architectures: tuple[str, ...] = ("amd64", "arm64"),
                 extra_master: dict[str, Any] | None = None,
                 extra_worker: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None) -> Path:
    config: dict[str, Any] = {
        "package_paths": [str(p) for p in package_paths],
        "master": {
            "bind": f"127.0.0.1:{port}",
            "data_dir": str(data_dir),
            "processes": 2,
            "users": {name: {"password_hash": _HASH, "roles": roles}
                      for name, roles in USERS.items()},
            **(extra_master or {}),
        },
        "repository": {"suite": "stable", "component": "main",
                       "architectures": list(architectures)},
        "worker": {
            "master_url": f"http://127.0.0.1:{port}",
            "username": "worker",
            "password": PASSWORD,
            "work_dir": str(path.parent / "work"),
            "heartbeat_interval": 1,
            # Most tests build YAML definitions on the host (bubblewrap-confined); the tests of
            # clean environments ask for them.
            "environment": "host",
            **(extra_worker or {}),
        },
    }
    # The `master` command's client commands (status, builds, logs, ...) use the API as admin.
    config["client"] = {"url": f"http://127.0.0.1:{port}", "user": "admin",
                        "password": PASSWORD}
    if broker_url:
        config["broker_url"] = broker_url
    # Names that no definition matches are looked up as Debian sources. Most tests need no
    # real archive for that: a local deb-src repository with one unrelated source answers
    # "not found" at once. Tests of Debian sources set debian_sources themselves.
    config["debian_sources"] = [local_deb_src(path.parent / "deb-src")]
    config.update(extra or {})
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)  # it holds the worker's password
    return path


def local_deb_src(folder: Path) -> str:
    """A flat deb-src repository holding one unrelated source; its one-line entry."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Sources").write_text(
        "Package: pkgfarm-unrelated\nBinary: pkgfarm-unrelated\nVersion: 1.0\n"
        "Architecture: all\nFormat: 3.0 (native)\nDirectory: .\nFiles:\n"
        " 00000000000000000000000000000000 1 pkgfarm-unrelated_1.0.dsc\n")
    return f"deb-src [trusted=yes] file:{folder} ./"


class Master:
    def __init__(self, config: Path, port: int, log: Path, *, host: str = "127.0.0.1",
                 ca_file: Path | None = None) -> None:
        self.config, self.port, self.log = config, port, log
        self.proc: subprocess.Popen[bytes] | None = None
        #: with a CA, the master serves HTTPS and every request here checks it against the CA
        self.verify: str | bool = str(ca_file) if ca_file else True
        self.url = f"{'https' if ca_file else 'http'}://{host}:{port}"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            # Its own process group: a crash test kills gunicorn's arbiter and workers at once.
            self.proc = subprocess.Popen(
                [str(BIN / "master"), "serve", "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_for(self._healthy, 30, f"the master on port {self.port} (log: {self.log})")

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the master exited with {self.proc.returncode}:\n"
                               + self.log.read_text()[-3000:])
        return requests.get(self.url + "/api/v1/health", timeout=2,
                            verify=self.verify).status_code == 200

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def crash(self) -> None:
        """SIGKILL the master and its gunicorn workers, as when its machine dies."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def api(self, method: str, path: str, user: str | None = "admin", **kwargs: Any
            ) -> requests.Response:
        auth = (user, PASSWORD) if user else None
        kwargs.setdefault("verify", self.verify)
        return requests.request(method, self.url + path, auth=auth, timeout=60, **kwargs)

    def submit(self, packages: list[str], arch: str | None = None) -> int:
        body: dict[str, Any] = {"packages": packages}
        if arch:
            body["arch"] = arch
        resp = self.api("POST", "/api/v1/builds", json=body)
        assert resp.status_code == 202, resp.text
        return int(resp.json()["id"])

    def wait_build(self, build_id: int, timeout: float = 180) -> dict[str, Any]:
        def final() -> dict[str, Any] | None:
            build = self.api("GET", f"/api/v1/builds/{build_id}").json()
            done = all(j["status"] in ("success", "failed", "dep-failed", "cancelled")
                       for j in build["jobs"])
            return build if done else None
        result: dict[str, Any] = wait_for(final, timeout, f"build {build_id}", interval=0.3)
        return result

    def index(self, arch: str, suite: str = "stable", component: str = "main") -> str:
        return requests.get(
            f"{self.url}/repo/dists/{suite}/{component}/binary-{arch}/Packages", timeout=10,
            verify=self.verify).text


class Worker:
    def __init__(self, config: Path, name: str, arches: list[str], log: Path, *,
                 prefix: list[str] | None = None) -> None:
        self.config, self.name, self.arches, self.log = config, name, arches, log
        # Runs the worker through a command that execs it (e.g. `ip netns exec NS`), so the
        # PID started here is still the worker's own.
        self.prefix = list(prefix or [])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [*self.prefix, str(BIN / "worker"), "run", "--config", str(self.config),
                "--name", self.name]
        for a in self.arches:
            args += ["--arch", a]
        with open(self.log, "ab") as out:
            # Its own process group, so that a SIGKILL test can kill the worker with its pool
            # processes, as when a machine dies.
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: b" ready." in self.log.read_bytes() or self._exited(), 60,
                 f"worker {self.name} (log: {self.log})")
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited:\n{self.log.read_text()[-3000:]}")

    def _exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if sig == signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        stop_process(self.proc, sig, timeout=60)
        # Pool processes the worker started exit with it; make sure none is left behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def parse_packages(text: str) -> list[dict[str, str]]:
    stanzas = []
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if fields:
            stanzas.append(fields)
    return stanzas


class AptClient:
    """A stock apt-get with a throwaway state directory; the machine's apt is not touched."""

    def __init__(self, root: Path, source_line: str,
                 architectures: tuple[str, ...] = ("amd64", "arm64")) -> None:
        self.root = root
        for sub in ("etc/sources.list.d", "etc/preferences.d", "etc/apt.conf.d",
                    "state/lists/partial", "cache/archives/partial", "downloads"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "state/status").write_text("")
        (root / "etc/sources.list").write_text(source_line + "\n")
        arches = " ".join(f'"{a}";' for a in architectures)
        self.conf = root / "apt.conf"
        self.conf.write_text(textwrap.dedent(f"""\
            Dir::Etc::sourcelist "{root}/etc/sources.list";
            Dir::Etc::sourceparts "{root}/etc/sources.list.d";
            Dir::Etc::preferences "{root}/etc/preferences";
            Dir::Etc::preferencesparts "{root}/etc/preferences.d";
            Dir::Etc::parts "{root}/etc/apt.conf.d";
            Dir::State "{root}/state";
            Dir::State::status "{root}/state/status";
            Dir::Cache "{root}/cache";
            Debug::NoLocking "1";
            APT::Sandbox::User "root";
            APT::Architecture "{architectures[0]}";
            APT::Architectures {{ {arches} }};
            Acquire::Languages "none";
            Acquire::Retries "0";
            """))

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "APT_CONFIG": str(self.conf), "DEBIAN_FRONTEND": "noninteractive"}
        result = subprocess.run(["apt-get", "-q", *args], cwd=self.root / "downloads", env=env,
                                capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"apt-get {' '.join(args)} failed:\n{result.stdout}\n"
                                 f"{result.stderr}")
        return result

    def cache(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """apt-cache with the same state (what the last update accepted)."""
        env = {**os.environ, "APT_CONFIG": str(self.conf)}
        result = subprocess.run(["apt-cache", *args], env=env, capture_output=True, text=True,
                                timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"apt-cache {' '.join(args)} failed:\n{result.stdout}\n"
                                 f"{result.stderr}")
        return result

    def update(self) -> subprocess.CompletedProcess[str]:
        result = self.run("update")
        # apt-get update exits 0 even when it could not use an index; a warning or error line
        # means the repository was not accepted.
        bad = [line for line in (result.stdout + result.stderr).splitlines()
               if line.startswith(("W:", "E:", "Err:"))]
        assert not bad, "apt-get update complained:\n" + "\n".join(bad)
        return result

    def install_into(self, target: Path, *names: str) -> subprocess.CompletedProcess[str]:
        """`apt-get install NAMES` into the throwaway root ``target``, which has a dpkg database
        of its own (empty at first): apt resolves against that database and dpkg unpacks
        below ``target``. This machine's own packages are never touched."""
        admin = target / "var/lib/dpkg"
        for sub in ("updates", "info"):
            (admin / sub).mkdir(parents=True, exist_ok=True)
        for name in ("status", "available"):
            (admin / name).touch()
        return self.run("-y", "-o", f"Dir::State::status={admin / 'status'}",
                        "-o", f"DPkg::Options::=--root={target}", "install", *names)

    def download(self, spec: str) -> Path:
        downloads = self.root / "downloads"
        before = set(downloads.iterdir())
        self.run("download", spec)
        new = sorted(set(downloads.iterdir()) - before)
        assert len(new) == 1, f"apt-get download {spec} gave {new}"
        return new[0]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def repo_files(data_dir: Path) -> dict[str, str]:
    """Every file the master's repository serves, with its sha256 (to prove nothing changed)."""
    root = data_dir / "repo"
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file()}


@contextlib.contextmanager
def standalone_master(root: Path, extra_master: dict[str, Any] | None = None,
                      repository: dict[str, Any] | None = None) -> Iterator[Master]:
    """A master under gunicorn with its own redis-server and no workers (uploads by hand,
    API tests). ``repository`` adds keys to the config's repository section."""
    redis = RedisServer(root / "redis")
    port = free_port()
    config = write_config(root / "config.yaml", data_dir=root / "data", port=port,
                          broker_url=redis.url, package_paths=[], extra_master=extra_master)
    if repository:
        data = yaml.safe_load(config.read_text())
        data["repository"].update(repository)
        config.write_text(yaml.safe_dump(data))
    master = Master(config, port, root / "master.log")
    master.data_dir = root / "data"
    with running(redis, master):
        yield master


@contextlib.contextmanager
def running(*parts: Any) -> Iterator[None]:
    started = []
    try:
        for part in parts:
            part.start()
            started.append(part)
        yield
    finally:
        for part in reversed(started):
            part.stop()


def make_deb(workdir: Path, name: str, version: str, arch: str = "all",
             payload: bytes = b"data\n", source: str | None = None) -> Path:
    """A small valid .deb made with dpkg-deb, for upload tests."""
    root = workdir / f"{name}-{version}-{arch}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/share" / name).mkdir(parents=True)
    (root / "usr/share" / name / "payload").write_bytes(payload)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n"
        + (f"Source: {source}\n" if source else "") +
        f"Maintainer: Test <test@example.org>\nDescription: test package {name}\n"
        " Made by the pkgfarm tests.\n")
    out = workdir / f"{name}_{version.split(':')[-1]}_{arch}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)],
                   check=True, capture_output=True)
    shutil.rmtree(root)
    return out


FINAL = ("success", "failed", "dep-failed", "cancelled")


def assert_consistent(master: Master, apt_root: Path,
                      architectures: tuple[str, ...] = ("amd64", "arm64")) -> None:
    """After a fault: every build final; every archive of every successful job listed exactly
    once in each index it belongs to (each architecture's for `all`); the packages API without
    duplicates; and a stock apt-get accepting the repository.
    """
    builds = master.api("GET", "/api/v1/builds?limit=1000").json()["builds"]
    listed: dict[str, dict[str, int]] = {}
    for arch in architectures:
        counts = listed.setdefault(arch, {})
        for stanza in parse_packages(master.index(arch)):
            filename = stanza["Filename"].rsplit("/", 1)[1]
            counts[filename] = counts.get(filename, 0) + 1
    for build in builds:
        for job in build["jobs"]:
            assert job["status"] in FINAL, f"build {build['id']} is not final: {job}"
            if job["status"] != "success":
                continue
            archives = [f for f in job["files"] if f.endswith(".deb")]
            assert archives, job
            for filename in archives:
                arches = architectures if filename.endswith("_all.deb") else (
                    filename[:-4].rsplit("_", 1)[1],)
                for arch in arches:
                    assert listed[arch].get(filename) == 1, (arch, filename, listed)
    published = [(p["suite"], p["filename"])
                 for p in master.api("GET", "/api/v1/packages").json()["packages"]]
    assert len(published) == len(set(published)), published
    apt = AptClient(apt_root, f"deb [trusted=yes] {master.url}/repo stable main", architectures)
    apt.update()


#: The folders of the dnf and pacman clients made by the running test; their keyrings' gpg-agents
#: are stopped when it ends (`stop_gpg_agents`, called by an autouse fixture).
CLIENT_FOLDERS: list[Path] = []


def stop_gpg_agents(base: Path) -> None:
    """Stop the gpg-agent of every keyring under ``base`` (dnf's in its cache, pacman-key's);
    gpgconf finds each agent's socket from its home. Links are not followed out of ``base``."""
    for folder, _dirs, files in os.walk(base):
        if {"pubring.kbx", "pubring.gpg", "trustdb.gpg"} & set(files):
            subprocess.run(["gpgconf", "--homedir", folder, "--kill", "all"],
                           capture_output=True, timeout=60, check=False)


class DnfClient:
    """A stock dnf with its own install root, config, cache and (empty) repos.d."""

    def __init__(self, root: Path, snippet: str) -> None:
        CLIENT_FOLDERS.append(root)
        self.root = root / "root"
        self.root.mkdir(parents=True)
        (root / "repos.d").mkdir()
        self.config = root / "dnf.conf"
        self.config.write_text(
            "[main]\n"
            f"cachedir={root / 'cache'}\n"
            f"logdir={root / 'log'}\n"
            f"persistdir={root / 'persist'}\n"
            f"reposdir={root / 'repos.d'}\n"
            "install_weak_deps=False\nkeepcache=False\nmetadata_expire=0\n"
            "\n" + snippet)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["dnf", "-y", f"--installroot={self.root}", f"--config={self.config}",
             "--releasever=1", "--setopt=tsflags=nodocs", "--disableplugin=*", *args],
            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def program(self, path: str) -> str:
        return subprocess.run(["chroot", str(self.root), path], capture_output=True,
                              text=True, check=True, timeout=30).stdout


class PacmanClient:
    """A stock pacman with its own root, database, cache, config and keyring."""

    def __init__(self, root: Path, snippet: str, key: Path | None, fingerprint: str | None,
                 arch: str = "x86_64") -> None:
        CLIENT_FOLDERS.append(root)
        self.base = root
        self.root, self.db, self.cache, self.gpg = (root / "root", root / "db", root / "cache",
                                                    root / "gnupg")
        for d in (self.root, self.db, self.cache):
            d.mkdir(parents=True, exist_ok=True)
        self.config = root / "pacman.conf"
        self.config.write_text(f"[options]\nArchitecture = {arch}\nSigLevel = Required\n"
                               f"LocalFileSigLevel = Optional\n\n{snippet}")
        if key is not None:
            self.key("--init")
            self.key("--add", str(key))
            self.key("--lsign-key", str(fingerprint))

    def key(self, *args: str) -> None:
        result = subprocess.run(["pacman-key", "--gpgdir", str(self.gpg), *args],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["pacman", "--root", str(self.root), "--dbpath", str(self.db), "--cachedir",
             str(self.cache), "--gpgdir", str(self.gpg), "--config", str(self.config),
             "--logfile", str(self.base / "pacman.log"), "--noconfirm",
             *args], capture_output=True, text=True, timeout=300)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

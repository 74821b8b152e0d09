"""The farm end to end on this machine, as `./dev.sh demo` runs it.

Makes a signing key, starts a master (gunicorn, with its private redis-server because the
config names no broker) and one worker tagged with this machine's architecture, which builds in
clean environments (a base of Debian bookworm is made on the first run, about a minute, and
kept in .demo-cache/). It queues builds of the example definitions over the HTTP API, waits for
them, then points a stock apt-get (with a throwaway state folder; the machine's own apt is not
touched) at the signed repository, downloads the packages, unpacks them and runs the programs
they install. Everything else lives under .demo/ and is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import requests
import yaml
from werkzeug.security import generate_password_hash

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def wait(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except requests.RequestException:
            result = None
        if result:
            return result
        time.sleep(0.3)
    raise SystemExit(f"demo: timed out waiting for {what}")


def host_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def apt(conf: Path, cwd: Path, *args: str) -> str:
    result = subprocess.run(["apt-get", "-q", *args], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "APT_CONFIG": str(conf)})
    if result.returncode != 0:
        raise SystemExit(f"demo: apt-get {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(ROOT / ".demo"), help="where the demo keeps its files")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()

    base = Path(args.dir).resolve()
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    port = free_port(args.port)
    url = f"http://127.0.0.1:{port}"
    arch = host_arch()
    admin_pw, worker_pw = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    step("master key-generate")
    key = base / "signing-key.asc"
    subprocess.run([str(BIN / "master"), "key-generate", "--output", str(key)], check=True)
    # Clean environments need root (they mount an overlay and enter it with bubblewrap).
    environment = "clean" if os.geteuid() == 0 else "host"
    config = base / "config.yaml"
    config.write_text(yaml.safe_dump({
        "package_paths": [str(ROOT / "examples" / "packages")],
        "master": {
            "bind": f"127.0.0.1:{port}",
            "data_dir": str(base / "data"),
            "processes": 2,
            "users": {
                "admin": {"password_hash": generate_password_hash(admin_pw), "roles": ["admin"]},
                "worker": {"password_hash": generate_password_hash(worker_pw),
                           "roles": ["upload"]},
            },
        },
        "repository": {"suite": "stable", "component": "main", "architectures": [arch],
                       "signing_key": str(key)},
        "worker": {"master_url": url, "username": "worker", "architectures": [arch],
                   "work_dir": str(base / "work"), "heartbeat_interval": 5,
                   "environment": environment,
                   "base_dir": str(ROOT / ".demo-cache" / "bases")},
    }, sort_keys=False))
    env = {**os.environ, "PKGFARM_CONFIG": str(config), "PKGFARM_WORKER_PASSWORD": worker_pw}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        step(f"master serve (log: {base / 'master.log'})")
        with open(base / "master.log", "wb") as log:
            procs.append(subprocess.Popen([str(BIN / "master"), "serve"], env=env, stdout=log,
                                          stderr=subprocess.STDOUT))
        health = wait(lambda: requests.get(url + "/api/v1/health", timeout=2).json(), 30,
                      "the master")
        print(json.dumps(health, indent=2))

        step(f"worker run --arch {arch} (log: {base / 'worker.log'})")
        with open(base / "worker.log", "wb") as log:
            procs.append(subprocess.Popen(
                [str(BIN / "worker"), "run", "--arch", arch, "--name", "demo-worker"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        auth = ("admin", admin_pw)
        workers = wait(lambda: requests.get(url + "/api/v1/workers", auth=auth,
                                            timeout=5).json()["workers"], 60, "the worker")
        print(json.dumps(workers, indent=2))

        step("POST /api/v1/builds {\"packages\": [\"hello-farm\", \"farm-sysinfo\"]}")
        resp = requests.post(url + "/api/v1/builds", auth=auth, timeout=30,
                             json={"packages": ["hello-farm", "farm-sysinfo"]})
        print(resp.status_code, json.dumps(resp.json(), indent=2))
        build_url = resp.json()["url"]

        def finished():  # type: ignore[no-untyped-def]
            build = requests.get(build_url, auth=auth, timeout=5).json()
            return build if build["status"] in ("success", "failed") else None
        print(f"  (building in {environment} environments; the first clean build makes the "
              "base, about a minute)")
        build = wait(finished, 900, "the build")
        for job in build["jobs"]:
            print(f"  {job['package']} {job['version']} {job['arch']}: {job['status']} "
                  f"on {job['worker']}")
        if build["status"] != "success":
            print(requests.get(build["jobs"][0]["log_url"], auth=auth, timeout=5).text)
            return 1

        step("apt-get update && apt-get download, with a throwaway apt state in "
             f"{base / 'apt'}")
        aptdir = base / "apt"
        for sub in ("lists/partial", "cache/archives/partial", "parts", "downloads"):
            (aptdir / sub).mkdir(parents=True, exist_ok=True)
        (aptdir / "status").write_text("")
        keyring = aptdir / "pkgfarm.gpg"
        keyring.write_bytes(requests.get(url + "/repo/key.gpg", timeout=10).content)
        source = f"deb [signed-by={keyring}] {url}/repo stable main"
        (aptdir / "sources.list").write_text(source + "\n")
        conf = aptdir / "apt.conf"
        conf.write_text(textwrap.dedent(f"""\
            Dir::Etc::sourcelist "{aptdir}/sources.list";
            Dir::Etc::sourceparts "{aptdir}/parts";
            Dir::Etc::parts "{aptdir}/parts";
            Dir::Etc::preferencesparts "{aptdir}/parts";
            Dir::State "{aptdir}";
            Dir::State::lists "{aptdir}/lists";
            Dir::State::status "{aptdir}/status";
            Dir::Cache "{aptdir}/cache";
            Debug::NoLocking "1";
            APT::Sandbox::User "root";
            Acquire::Languages "none";
            """))
        print(f"  sources.list: {source}")
        print(apt(conf, aptdir, "update"))
        downloads = aptdir / "downloads"
        apt(conf, downloads, "download", "hello-farm", "farm-sysinfo")
        for deb in sorted(downloads.iterdir()):
            print(f"  downloaded {deb.name} ({deb.stat().st_size} bytes)")
        unpacked = base / "unpacked"
        for deb in downloads.iterdir():
            subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
        step("run the installed programs")
        for program in ("hello-farm", "farm-sysinfo"):
            out = subprocess.run([str(unpacked / "usr/bin" / program)], capture_output=True,
                                 text=True, check=True).stdout.strip()
            print(f"  $ {program}\n  {out}")
        step("done: the farm built both packages and apt-get fetched them from "
             f"{url}/repo/")
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    sys.exit(main())

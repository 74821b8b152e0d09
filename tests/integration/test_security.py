"""Credentials grant only what they name, strangers cannot lock workers out, lost messages are
sent again, slow clients cannot starve the master, and the index holds only what the master
checked. Real processes: redis-server, the master under gunicorn (two processes), workers.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
import yaml

from common.messages import PROTOCOL_VERSION
from tests.integration.conftest import Farm
from tests.integration.farm import (
    PASSWORD,
    TEST_PACKAGES,
    Master,
    make_deb,
    repo_files,
    wait_for,
    write_config,
)

STRANGER = "127.0.0.2"


def request_from(address: str, master_url: str, method: str, path: str,
                 user: str, password: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One HTTP request whose source address is ``address`` (a loopback alias)."""
    host, port = master_url.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(address, 0))
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """redis-server and the master (two processes, short leases), no worker yet; besides the
    usual users: `limited` (build, packages itest-al*), `manual` (upload and build) and
    `uploader` (upload only)."""
    f = Farm(tmp_path_factory.mktemp("security"), extra_master={"lease_seconds": 6})
    f.redis.start()
    write_config(f.config, data_dir=f.data_dir, port=f.port, broker_url=f.redis.url,
                 package_paths=[TEST_PACKAGES], extra_master=f.extra_master)
    data = yaml.safe_load(f.config.read_text())
    users = data["master"]["users"]
    users["limited"] = {**users["builder"], "packages": ["itest-al*"]}
    users["manual"] = {**users["worker"], "roles": ["upload", "build"]}
    users["uploader"] = {**users["worker2"]}
    f.config.write_text(yaml.safe_dump(data))
    f.master = Master(f.config, f.port, f.root / "master.log")
    try:
        f.master.start()
        yield f
    finally:
        f.stop()


# -- what a credential grants ------------------------------------------------------------------


def test_upload_only_user_cannot_make_a_local_job(farm: Farm) -> None:
    master = farm.master
    assert master is not None
    before = repo_files(farm.data_dir)
    resp = master.api("POST", "/api/v1/jobs", user="uploader", json={
        "package": "bash", "version": "99.0-1", "arch": "all", "worker": "evil",
        "protocol": PROTOCOL_VERSION})
    assert resp.status_code == 403, resp.text
    resp = master.api("POST", "/api/v1/builds", user="uploader", json={"packages": ["bash"]})
    assert resp.status_code == 403
    assert repo_files(farm.data_dir) == before
    assert "bash" not in master.index("amd64")


def test_package_patterns_limit_every_way_of_asking(farm: Farm) -> None:
    master = farm.master
    assert master is not None
    resp = master.api("POST", "/api/v1/builds", user="limited",
                      json={"packages": ["itest-amd64"]})
    assert resp.status_code == 403 and "itest-amd64" in resp.json()["error"]
    resp = master.api("POST", "/api/v1/builds", user="limited",
                      json={"packages": ["itest-all", "itest-amd64"]})
    assert resp.status_code == 403  # all of a set, or none
    resp = master.api("POST", "/api/v1/builds", user="limited", json={"packages": ["itest-all"]})
    assert resp.status_code == 202, resp.text
    # A local job is a build too: the manual user may, the limited one may not.
    local = {"package": "itest-local", "version": "1.0-1", "arch": "all", "worker": "box",
             "protocol": PROTOCOL_VERSION}
    assert master.api("POST", "/api/v1/jobs", user="limited", json=local).status_code == 403
    assert master.api("POST", "/api/v1/jobs", user="manual", json=local).status_code == 201


def test_worker_names_belong_to_their_user(farm: Farm) -> None:
    master = farm.master
    assert master is not None
    beat = {"name": "owned-box", "architectures": ["amd64"], "concurrency": 1}
    assert master.api("POST", "/api/v1/workers/heartbeat", user="worker",
                      json=beat).status_code == 200
    for leaving in (False, True):
        resp = master.api("POST", "/api/v1/workers/heartbeat", user="uploader",
                          json={**beat, "leaving": leaving})
        assert resp.status_code == 403, resp.text
    names = {w["name"] for w in master.api("GET", "/api/v1/workers").json()["workers"]}
    assert "owned-box" in names


@pytest.mark.parametrize("name", ["x" * 300, "git+https://example.org/" + "a" * 3000])
def test_long_names_are_clear_errors(farm: Farm, name: str) -> None:
    master = farm.master
    assert master is not None
    resp = master.api("POST", "/api/v1/builds", json={"packages": [name]})
    assert resp.status_code == 400, resp.text
    assert "at most" in resp.json()["error"]


def test_long_local_job_fields_are_refused(farm: Farm) -> None:
    master = farm.master
    assert master is not None
    for package, version in (("p" * 300, "1.0-1"), ("pkg", "1" * 300)):
        resp = master.api("POST", "/api/v1/jobs", user="manual", json={
            "package": package, "version": version, "arch": "all", "worker": "box",
            "protocol": PROTOCOL_VERSION})
        assert resp.status_code == 400, resp.text


# -- strangers and lost messages -------------------------------------------------------------


def test_a_stranger_cannot_lock_the_worker_out(farm: Farm) -> None:
    master = farm.master
    assert master is not None
    worker = farm.add_worker("w-lock", ["amd64"])
    try:
        for _ in range(25):
            status, _ = request_from(STRANGER, master.url, "GET", "/api/v1/builds",
                                     "worker", "guess")
            assert status in (401, 429)
        # The stranger stays throttled, even with the right password; both master processes
        # agree (the failures are shared).
        for _ in range(4):
            status, body = request_from(STRANGER, master.url, "GET", "/api/v1/builds",
                                        "worker", PASSWORD)
            assert status == 429, body
        # Meanwhile the real worker, at its own address, builds.
        build = master.wait_build(master.submit(["itest-amd64"]), timeout=120)
        assert build["status"] == "success", build
    finally:
        worker.stop()
        farm.workers.pop("w-lock")


def test_a_message_consumed_without_a_claim_is_sent_again(farm: Farm) -> None:
    master = farm.master
    assert master is not None
    build_id = master.submit(["itest-all"])
    broker = redis.Redis.from_url(farm.redis.url)
    taken = wait_for(lambda: broker.rpop("build.all"), 20, "the build's message")
    assert b"pkgfarm-job-" in taken  # consumed, and no worker will ever claim it
    start = time.monotonic()
    worker = farm.add_worker("w-resend", ["amd64"])
    try:
        build = master.wait_build(build_id, timeout=120)
        assert build["status"] == "success", build
        (job,) = build["jobs"]
        assert job["attempt"] >= 2
        assert time.monotonic() - start < 90
    finally:
        worker.stop()
        farm.workers.pop("w-resend")


def test_an_expired_local_job_fails_and_is_never_queued(farm: Farm) -> None:
    master = farm.master
    assert master is not None
    resp = master.api("POST", "/api/v1/jobs", user="manual", json={
        "package": "itest-gone", "version": "1.0-1", "arch": "all", "worker": "box",
        "protocol": PROTOCOL_VERSION})
    assert resp.status_code == 201
    build_id = resp.json()["build_id"]
    build = master.wait_build(build_id, timeout=60)
    (job,) = build["jobs"]
    assert job["status"] == "failed" and "stopped renewing its lease" in job["error"]
    assert job["attempt"] == 1


# -- slow clients ----------------------------------------------------------------------------


def test_slow_clients_do_not_starve_the_master(farm: Farm) -> None:
    master = farm.master
    assert master is not None
    host, port = master.url.split("//", 1)[1].split(":")
    stop = threading.Event()
    sockets: list[socket.socket] = []
    for i in range(200):
        s = socket.create_connection((host, int(port)), timeout=10)
        # Half send their headers a line at a time, half a body that never completes.
        if i % 2:
            s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
        else:
            s.sendall(b"PUT /api/v1/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
                      b"Authorization: Basic " + base64.b64encode(f"admin:{PASSWORD}".encode())
                      + b"\r\n\r\npartial")
        sockets.append(s)

    def dribble() -> None:
        while not stop.wait(2):
            for s in sockets[1::2]:
                with contextlib.suppress(OSError):
                    s.sendall(b"X-Slow: 1\r\n")

    dripper = threading.Thread(target=dribble, daemon=True)
    dripper.start()
    worker = farm.add_worker("w-slow", ["amd64"])
    try:
        times = []
        for path in ("/api/v1/health", "/api/v1/builds?limit=5",
                     "/repo/dists/stable/Release"):
            for _ in range(5):
                start = time.monotonic()
                resp = requests.get(master.url + path, auth=("admin", PASSWORD), timeout=5)
                times.append(time.monotonic() - start)
                assert resp.status_code == 200, (path, resp.status_code)
        assert max(times) < 1.0, times
        build = master.wait_build(master.submit(["itest-amd64"]), timeout=120)
        assert build["status"] == "success", build
    finally:
        stop.set()
        for s in sockets:
            s.close()
        worker.stop()
        farm.workers.pop("w-slow")


# -- what reaches the index ----------------------------------------------------------------------


CRAFTED = {
    "computed field": "Package: cr-a\nVersion: 1.0\nArchitecture: all\nMaintainer: T <t@e.org>\n"
                      "SHA512: 00\nDescription: crafted\n",
    "filename field": "Package: cr-b\nVersion: 1.0\nArchitecture: all\nMaintainer: T <t@e.org>\n"
                      "Filename: pool/x.deb\nDescription: crafted\n",
    "blank line": "Package: cr-c\nVersion: 1.0\n\nArchitecture: all\nMaintainer: T <t@e.org>\n"
                  "Description: crafted\n",
    "second stanza": "Package: cr-d\nVersion: 1.0\nArchitecture: all\nMaintainer: T <t@e.org>\n"
                     "Description: crafted\n\nPackage: other\nVersion: 2\n",
    "source climbing out": "Package: cr-e\nSource: ../../../etc\nVersion: 1.0\n"
                           "Architecture: all\nMaintainer: T <t@e.org>\nDescription: crafted\n",
    "field twice": "Package: cr-f\nVersion: 1.0\nVersion: 2.0\nArchitecture: all\n"
                   "Maintainer: T <t@e.org>\nDescription: crafted\n",
    "bad relation": "Package: cr-g\nVersion: 1.0\nArchitecture: all\nMaintainer: T <t@e.org>\n"
                    "Depends: libc6 (>= )\nDescription: crafted\n",
}


def crafted_deb(folder: Path, name: str, control: str) -> Path:
    """A .deb whose control file is ``control`` byte for byte (dpkg-deb --build would check
    it), assembled with ar as dpkg-deb lays an archive out."""
    import io
    import subprocess
    import tarfile

    work = folder / name
    work.mkdir(parents=True)
    for member, content in (("control.tar.gz", {"./control": control.encode()}),
                            ("data.tar.gz", {})):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for item, data in content.items():
                info = tarfile.TarInfo(item)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        (work / member).write_bytes(buf.getvalue())
    (work / "debian-binary").write_text("2.0\n")
    deb = folder / f"{name}_1.0_all.deb"
    subprocess.run(["ar", "rc", str(deb), "debian-binary", "control.tar.gz", "data.tar.gz"],
                   cwd=work, check=True)
    return deb


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_control_files_are_refused(farm: Farm, tmp_path: Path, case: str) -> None:
    master = farm.master
    assert master is not None
    name = CRAFTED[case].split("\n", 1)[0].split(": ")[1]
    deb = crafted_deb(tmp_path, name, CRAFTED[case])
    before = repo_files(farm.data_dir)
    data = deb.read_bytes()
    resp = master.api("PUT", "/api/v1/upload", data=data, params={
        "filename": deb.name, "sha256": hashlib.sha256(data).hexdigest()})
    assert resp.status_code == 422, (case, resp.text)
    assert repo_files(farm.data_dir) == before


def test_the_index_holds_only_checked_fields(farm: Farm, tmp_path: Path) -> None:
    master = farm.master
    assert master is not None
    deb = make_deb(tmp_path, "cr-good", "1.0-1")
    data = deb.read_bytes()
    resp = master.api("PUT", "/api/v1/upload", data=data, params={
        "filename": deb.name, "sha256": hashlib.sha256(data).hexdigest()})
    assert resp.status_code == 201, resp.text
    index = master.index("amd64")
    entry = next(e for e in index.split("\n\n") if "Package: cr-good" in e).splitlines()
    assert [line for line in entry if line.startswith("SHA256:")] == [
        f"SHA256: {hashlib.sha256(data).hexdigest()}"]
    assert f"Size: {len(data)}" in entry
    assert not [line for line in entry if line.startswith(("SHA512", "Description-md5"))]


def test_many_followed_logs_do_not_starve_the_master(farm: Farm) -> None:
    master = farm.master
    assert master is not None
    job = master.api("POST", "/api/v1/jobs", user="manual", json={
        "package": "follow-me", "version": "1.0-1", "arch": "all", "worker": "box",
        "protocol": PROTOCOL_VERSION}).json()
    url = f"{master.url}/api/v1/builds/{job['build_id']}/packages/follow-me/log"
    streams = []
    try:
        # Each follow answers at once (before the log has a line), and holds no thread.
        for _ in range(200):
            resp = requests.get(url, params={"follow": "1"}, auth=("admin", PASSWORD),
                                stream=True, timeout=10)
            assert resp.status_code == 200, resp.text
            streams.append(resp)
        times = []
        for _ in range(10):
            start = time.monotonic()
            assert master.api("GET", "/api/v1/builds?limit=5").status_code == 200
            times.append(time.monotonic() - start)
        assert max(times) < 1.0, times
        # When the job ends, every follow ends too.
        assert master.api("POST", f"/api/v1/builds/{job['build_id']}/cancel").status_code == 200
        for resp in streams:
            b"".join(resp.iter_content(None))  # ends, or times out after 10 s
    finally:
        for resp in streams:
            resp.close()

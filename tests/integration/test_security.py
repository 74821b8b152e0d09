"""Credentials grant only what they name, strangers cannot lock workers out, lost messages are
sent again, slow clients cannot starve the master, and the index holds only what the master
checked. Real processes: redis-server, the master under gunicorn (two processes), workers.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import itertools
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
import yaml

from common.messages import PROTOCOL_VERSION
from master.api.workers import MAX_LIVE_NAMES
from master.auth import FAILURE_WINDOW, MAX_FAILURES
from master.buildlogs import MARKER, MAX_LOG_BYTES
from master.cli import HOUSEKEEPING_INTERVAL
from master.scheduler import LOST_GRACE, lost_message_bound
from tests.integration.conftest import Farm
from tests.integration.farm import (
    PASSWORD,
    TEST_PACKAGES,
    AptClient,
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
    usual users: `limited` (build, packages itest-al*), `demo` (build, packages demo-*),
    `manual` (upload and build) and `uploader` (upload only)."""
    f = Farm(tmp_path_factory.mktemp("security"), extra_master={"lease_seconds": 6})
    f.redis.start()
    write_config(f.config, data_dir=f.data_dir, port=f.port, broker_url=f.redis.url,
                 package_paths=[TEST_PACKAGES], extra_master=f.extra_master)
    data = yaml.safe_load(f.config.read_text())
    users = data["master"]["users"]
    users["limited"] = {**users["builder"], "packages": ["itest-al*"]}
    users["demo"] = {**users["builder"], "packages": ["demo-*"]}
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
    why = "their package patterns do not admit it"
    resp = master.api("POST", "/api/v1/builds", user="limited",
                      json={"packages": ["itest-amd64"]})
    assert resp.status_code == 403, resp.text
    assert "'itest-amd64'" in resp.json()["error"] and why in resp.json()["error"]
    resp = master.api("POST", "/api/v1/builds", user="limited",
                      json={"packages": ["itest-all", "itest-amd64"]})
    assert resp.status_code == 403 and why in resp.json()["error"]  # all of a set, or none
    resp = master.api("POST", "/api/v1/builds", user="limited", json={"packages": ["itest-all"]})
    assert resp.status_code == 202, resp.text
    # A local job is a build too: patterns apply to it as to the farm's builds.
    def local(package: str) -> dict[str, object]:
        return {"package": package, "version": "1.0-1", "arch": "all", "worker": "box",
                "protocol": PROTOCOL_VERSION}

    resp = master.api("POST", "/api/v1/jobs", user="limited", json=local("itest-local"))
    assert resp.status_code == 403, resp.text
    assert "'itest-local'" in resp.json()["error"] and why in resp.json()["error"]
    resp = master.api("POST", "/api/v1/jobs", user="demo", json=local("itest-local"))
    assert resp.status_code == 403 and why in resp.json()["error"]
    made = []
    for user, package in (("demo", "demo-x"), ("manual", "itest-local")):
        resp = master.api("POST", "/api/v1/jobs", user=user, json=local(package))
        assert resp.status_code == 201, (user, package, resp.text)
        assert resp.json()["package"] == package
        made.append(resp.json()["build_id"])
    for build_id in made:  # nobody builds them: end them now rather than at their lease's end
        assert master.api("POST", f"/api/v1/builds/{build_id}/cancel").status_code == 200


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
        assert "belongs to another user" in resp.json()["error"]
    names = {w["name"] for w in master.api("GET", "/api/v1/workers").json()["workers"]}
    assert "owned-box" in names
    # Leaving does not free a name: it stays its user's.
    assert master.api("POST", "/api/v1/workers/heartbeat", user="worker",
                      json={**beat, "leaving": True}).status_code == 200
    assert master.api("POST", "/api/v1/workers/heartbeat", user="uploader",
                      json=beat).status_code == 403


def test_a_user_cannot_invent_worker_names_without_end(farm: Farm) -> None:
    master = farm.master
    assert master is not None

    def beat(name: str, leaving: bool = False) -> requests.Response:
        return master.api("POST", "/api/v1/workers/heartbeat", user="uploader", json={
            "name": name, "architectures": ["amd64"], "concurrency": 1, "leaving": leaving})

    names = [f"invented-{i}" for i in range(MAX_LIVE_NAMES)]
    try:
        for name in names:
            assert beat(name).status_code == 200
        resp = beat("invented-one-more")
        assert resp.status_code == 403, resp.text
        assert f"{MAX_LIVE_NAMES} live worker names" in resp.json()["error"]
        live = {w["name"] for w in master.api("GET", "/api/v1/workers").json()["workers"]}
        assert "invented-one-more" not in live and set(names) <= live
        assert beat(names[0]).status_code == 200  # a live name of its own goes on
        # Another user is not held back by this one's names.
        assert master.api("POST", "/api/v1/workers/heartbeat", user="worker", json={
            "name": "other-users-box", "architectures": ["amd64"],
            "concurrency": 1}).status_code == 200
        assert beat(names[0], leaving=True).status_code == 200
        assert beat("invented-one-more").status_code == 200
        names[0] = "invented-one-more"
    finally:
        for name in names:
            beat(name, leaving=True)
        master.api("POST", "/api/v1/workers/heartbeat", user="worker", json={
            "name": "other-users-box", "architectures": ["amd64"], "concurrency": 1,
            "leaving": True})


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


@pytest.mark.parametrize("length", [241, 300, 1000])
def test_long_upload_file_names_are_clear_errors(farm: Farm, tmp_path: Path,
                                                 length: int) -> None:
    master = farm.master
    assert master is not None
    deb = make_deb(tmp_path, "long-name", "1.0-1")
    data = deb.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    before = repo_files(farm.data_dir)
    # An admin's upload by hand, an archive's name and a by-product's name of a running job.
    job = master.api("POST", "/api/v1/jobs", user="manual", json={
        "package": "long-name", "version": "1.0-1", "arch": "all", "worker": "box",
        "protocol": PROTOCOL_VERSION}).json()
    try:
        archive = "l" * (length - len("_1.0-1_all.deb")) + "_1.0-1_all.deb"
        byproduct = "l" * (length - len("_1.0-1_all.buildinfo")) + "_1.0-1_all.buildinfo"
        for user, name, params, headers in (
                ("admin", archive, {}, {}),
                ("manual", archive, {"job": job["job_id"], "attempt": job["attempt"]},
                 {"X-Pkgfarm-Token": job["token"]}),
                ("manual", byproduct, {"job": job["job_id"], "attempt": job["attempt"]},
                 {"X-Pkgfarm-Token": job["token"]})):
            assert len(name) == length
            resp = master.api("PUT", "/api/v1/upload", user=user, data=data, headers=headers,
                              params={"filename": name, "sha256": sha256, **params})
            assert resp.status_code == 400, (user, name[-20:], resp.status_code, resp.text)
            assert "filename is longer than 240 bytes" in resp.json()["error"]
        assert repo_files(farm.data_dir) == before
    finally:
        master.api("POST", f"/api/v1/builds/{job['build_id']}/cancel")


# -- strangers and lost messages -------------------------------------------------------------


def access_log(master: Master, since: int) -> list[str]:
    """The master's access-log lines written after byte ``since`` of its log."""
    with open(master.log, "rb") as fh:
        fh.seek(since)
        return fh.read().decode(errors="replace").splitlines()


def test_a_stranger_cannot_lock_the_worker_out(farm: Farm) -> None:
    master = farm.master
    assert master is not None
    worker = farm.add_worker("w-lock", ["amd64"])
    since = master.log.stat().st_size
    # (sent, answered, status) of each of the stranger's tries, all for the worker's name
    tries: list[tuple[float, float, int]] = []

    def attempt(password: str) -> int:
        sent = time.monotonic()
        status, _ = request_from(STRANGER, master.url, "GET", "/api/v1/builds", "worker",
                                 password)
        tries.append((sent, time.monotonic(), status))
        return status

    try:
        # The stranger uses up its failures...
        assert [attempt("guess") for _ in range(MAX_FAILURES)] == [401] * MAX_FAILURES
        # ...and is throttled now, even with the right password; every master process agrees
        # (the failures are shared).
        for _ in range(4):
            assert attempt(PASSWORD) == 429
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                attempt("guess")
                stop.wait(0.05)

        hammering = threading.Thread(target=hammer, daemon=True)
        hammering.start()
        try:
            # Meanwhile the real worker, at its own address, claims, renews its lease (the
            # build takes several leases' quarters), sends its log, uploads and reports.
            build = master.wait_build(master.submit(["itest-slow"]), timeout=180)
        finally:
            stop.set()
            hammering.join(30)
        assert build["status"] == "success", build
        (job,) = build["jobs"]
    finally:
        worker.stop()
        farm.workers.pop("w-lock")
    # The stranger stayed throttled the whole time: never more than MAX_FAILURES tries that
    # were not turned away within any FAILURE_WINDOW (a try's failure is recorded between its
    # sending and its answer), and never let in.
    assert all(status in (401, 429) for _, _, status in tries), tries
    let_through = [(sent, answered) for sent, answered, status in tries if status != 429]
    for i in range(len(let_through) - MAX_FAILURES):
        first_sent, last_answered = let_through[i][0], let_through[i + MAX_FAILURES][1]
        assert last_answered - first_sent >= FAILURE_WINDOW, let_through
    hammered = [answered for _, answered, _ in tries[MAX_FAILURES + 4:]]
    assert len(hammered) > 20
    assert max(b - a for a, b in itertools.pairwise(hammered)) < 10
    # The worker was never turned away, and did the whole protocol for the job.
    lines = access_log(master, since)
    mine = [line for line in lines if line.startswith("127.0.0.1 worker ")]
    assert not [line for line in mine if '" 429 ' in line], mine
    jid = job["id"]

    def count(request: str, status: int) -> int:
        return sum(1 for line in mine if f'"{request}' in line and f'" {status} ' in line)

    assert count(f"POST /api/v1/jobs/{jid}/claim ", 200) == 1
    assert count(f"POST /api/v1/jobs/{jid}/lease ", 200) >= 2
    assert count(f"POST /api/v1/jobs/{jid}/log?", 200) >= 1
    assert count("PUT /api/v1/upload?", 201) >= 1
    assert count(f"POST /api/v1/jobs/{jid}/report ", 200) == 1
    stranger = [line for line in lines if line.startswith(f"{STRANGER} ")]
    assert len(stranger) == len(tries)


def test_a_message_consumed_without_a_claim_is_sent_again(farm: Farm) -> None:
    master = farm.master
    assert master is not None
    build_id = master.submit(["itest-all"])
    broker = redis.Redis.from_url(farm.redis.url)
    taken = wait_for(lambda: broker.rpop("build.all"), 20, "the build's message")
    consumed = time.monotonic()
    assert b"pkgfarm-job-" in taken  # consumed, and no worker will ever claim it

    def attempt() -> int:
        (job,) = master.api("GET", f"/api/v1/builds/{build_id}").json()["jobs"]
        assert job["status"] == "queued", job
        return int(job["attempt"])

    # The stated bound, and room for the ticks' own time on a busy machine and for polling.
    bound = lost_message_bound(HOUSEKEEPING_INTERVAL)
    wait_for(lambda: attempt() >= 2, bound + 15, "the job's message sent again",
             interval=0.2)
    resent = time.monotonic() - consumed
    assert LOST_GRACE <= resent <= bound + 15, resent
    # Sent again as a new attempt, its message is in the broker; a worker now builds it.
    assert wait_for(lambda: broker.llen("build.all"), 10, "the new message") == 1
    worker = farm.add_worker("w-resend", ["amd64"])
    try:
        build = master.wait_build(build_id, timeout=120)
        assert build["status"] == "success", build
        (job,) = build["jobs"]
        assert job["attempt"] == 2
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
    "phased update": "Package: cr-h\nVersion: 1.0\nArchitecture: all\nMaintainer: T <t@e.org>\n"
                     "Phased-Update-Percentage: 0\nDescription: crafted\n",
    "source-only relation": "Package: cr-i\nVersion: 1.0\nArchitecture: all\n"
                            "Maintainer: T <t@e.org>\nDepends: libc6 [amd64]\n"
                            "Description: crafted\n",
    "bad installed size": "Package: cr-j\nVersion: 1.0\nArchitecture: all\n"
                          "Maintainer: T <t@e.org>\nInstalled-Size: 12kB\n"
                          "Description: crafted\n",
    "bad multi-arch": "Package: cr-k\nVersion: 1.0\nArchitecture: all\nMaintainer: T <t@e.org>\n"
                      "Multi-Arch: same\nDescription: crafted\n",
}


def crafted_deb(folder: Path, name: str, control: str) -> Path:
    """A .deb whose control file is ``control`` byte for byte (dpkg-deb --build would check
    it), assembled with ar as dpkg-deb lays an archive out."""
    import io
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


#: Fields of a control file that the index leaves out (the archive keeps them).
LEFT_OUT = ("Essential: yes", "Protected: yes", "Important: yes", "Task: cr-task",
            "Bugs: mailto:elsewhere@example.org", "Tag: role::program", "X-Unknown: anything",
            "Origin: elsewhere")


def test_the_index_holds_only_checked_fields(farm: Farm, tmp_path: Path) -> None:
    master = farm.master
    assert master is not None
    root = tmp_path / "cr-good"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/share/cr-good").mkdir(parents=True)
    (root / "usr/share/cr-good/file").write_text("good\n")
    (root / "DEBIAN/control").write_text(
        "Package: cr-good\nVersion: 1.0-1\nArchitecture: all\nMaintainer: T <t@example.org>\n"
        "Depends: libc6 (>= 2.36) | libc6.1\nMulti-Arch: foreign\n"
        + "".join(f"{line}\n" for line in LEFT_OUT)
        + "Section: utils\nDescription: a good package\n with a long description.\n")
    deb = tmp_path / "cr-good_1.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    data = deb.read_bytes()
    resp = master.api("PUT", "/api/v1/upload", data=data, params={
        "filename": deb.name, "sha256": hashlib.sha256(data).hexdigest()})
    assert resp.status_code == 201, resp.text
    index = master.index("amd64")
    entry = next(e for e in index.split("\n\n") if "Package: cr-good" in e).splitlines()
    assert entry == [
        "Package: cr-good", "Version: 1.0-1", "Architecture: all",
        "Maintainer: T <t@example.org>", "Depends: libc6 (>= 2.36) | libc6.1",
        "Multi-Arch: foreign", "Section: utils", "Description: a good package",
        " with a long description.", "Filename: pool/main/c/cr-good/cr-good_1.0-1_all.deb",
        f"Size: {len(data)}", f"MD5sum: {hashlib.md5(data, usedforsecurity=False).hexdigest()}",
        f"SHA1: {hashlib.sha1(data, usedforsecurity=False).hexdigest()}",
        f"SHA256: {hashlib.sha256(data).hexdigest()}"]
    # What apt makes of it: the record as above, not an essential package (which a
    # dist-upgrade would install on every client), nor a task's member.
    apt = AptClient(tmp_path / "apt", f"deb [trusted=yes] {master.url}/repo stable main")
    apt.update()
    shown = subprocess.run(["apt-cache", "show", "cr-good"], capture_output=True, text=True,
                           env={**os.environ, "APT_CONFIG": str(apt.conf)}, check=True).stdout
    assert "Package: cr-good" in shown
    for line in LEFT_OUT:
        assert line.split(":")[0] + ":" not in shown, shown
    upgrade = apt.run("-s", "dist-upgrade").stdout
    assert "cr-good" not in upgrade, upgrade
    task = apt.run("-s", "install", "cr-task^", check=False)
    assert task.returncode != 0 and "Inst cr-good" not in task.stdout


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


# -- log pieces ----------------------------------------------------------------------------------


def master_rss(master: Master) -> int:
    """The resident memory of the master's processes (gunicorn's arbiter and workers), bytes."""
    assert master.proc is not None
    pids = [master.proc.pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{master.proc.pid}/task/{master.proc.pid}/children")
                 .read_text().split()]
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def test_log_pieces_sent_together_are_streamed_and_bounded(farm: Farm, tmp_path: Path) -> None:
    master = farm.master
    assert master is not None
    job = master.api("POST", "/api/v1/jobs", user="manual", json={
        "package": "big-log", "version": "1.0-1", "arch": "all", "worker": "box",
        "protocol": PROTOCOL_VERSION}).json()
    jid, attempt, token = job["job_id"], job["attempt"], job["token"]
    piece_size = MAX_LOG_BYTES // 4
    pieces = []
    for i in range(6):  # 1.5 times the bound in all, each piece recognisable
        line = f"piece {i} of the log\n".encode()
        path = tmp_path / f"piece-{i}"
        path.write_bytes((line * (piece_size // len(line) + 1))[:piece_size])
        pieces.append(path)
    stop = threading.Event()
    peak = [master_rss(master)]
    before = peak[0]

    def renew_and_measure() -> None:  # this farm's leases are short
        renewed = time.monotonic()
        while not stop.wait(0.01):
            peak.append(master_rss(master))
            if time.monotonic() - renewed > 1:
                master.api("POST", f"/api/v1/jobs/{jid}/lease", user="manual",
                           json={"attempt": attempt, "token": token})
                renewed = time.monotonic()

    statuses: list[int | str] = []

    def send(path: Path) -> None:
        try:
            with open(path, "rb") as fh:
                statuses.append(master.api(
                    "POST", f"/api/v1/jobs/{jid}/log", user="manual",
                    params={"attempt": attempt}, data=fh,
                    headers={"X-Pkgfarm-Token": token}).status_code)
        except requests.RequestException as exc:
            statuses.append(repr(exc))

    helper = threading.Thread(target=renew_and_measure, daemon=True)
    helper.start()
    senders = [threading.Thread(target=send, args=(p,)) for p in pieces]
    try:
        for t in senders:
            t.start()
        for t in senders:
            t.join(180)
    finally:
        stop.set()
        helper.join(10)
        master.api("POST", f"/api/v1/builds/{job['build_id']}/cancel")
    assert statuses == [200] * len(pieces)
    # Exactly the bound: four whole pieces, each once and never interleaved, then one marker.
    log = (farm.data_dir / "logs" / str(jid) / f"{attempt}.log").read_bytes()
    assert len(log) == MAX_LOG_BYTES + len(MARKER)
    assert log.endswith(MARKER) and log.count(MARKER) == 1
    kept = [log[i:i + piece_size] for i in range(0, MAX_LOG_BYTES, piece_size)]
    contents = [p.read_bytes() for p in pieces]
    assert all(k in contents for k in kept) and len({bytes(k[:20]) for k in kept}) == 4
    # Streamed, not held: the master grew by far less than the six pieces (96 MiB) it took.
    # (The pieces take a few tenths of a second on a quick machine: a handful of samples.)
    assert len(peak) > 3 and max(peak) - before < 2 * piece_size, (len(peak), before, max(peak))

"""Faults with real processes: workers, Redis and the master die; nothing is lost or doubled.

Each test runs its own farm (redis-server, gunicorn master, `worker run` processes), stops
processes by their own PID, and ends with `assert_consistent`: every build final, every
published archive in the index exactly once, and a stock apt-get accepting the repository.
"""

from __future__ import annotations

import base64
import hashlib
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.conftest import Farm
from tests.integration.farm import PASSWORD, assert_consistent, make_deb, wait_for

LEASE = 6


@pytest.fixture
def farm(tmp_path) -> Iterator[Farm]:
    """A farm with a short lease and no workers yet; tests add the workers they need."""
    f = Farm(tmp_path, extra_master={"lease_seconds": LEASE})
    try:
        f.start({})
        yield f
    finally:
        f.stop()


def job_of(farm: Farm, build_id: int) -> dict[str, Any]:
    (job,) = farm.master.api("GET", f"/api/v1/builds/{build_id}").json()["jobs"]
    return job


def wait_building(farm: Farm, build_id: int) -> dict[str, Any]:
    return wait_for(lambda: (j := job_of(farm, build_id))["status"] == "building" and j, 60,
                    f"build {build_id} to start")


def test_killed_worker_build_runs_again_elsewhere(farm, tmp_path):
    farm.add_worker("w-doomed", ["amd64"])
    build_id = farm.master.submit(["itest-slow"])
    assert wait_building(farm, build_id)["worker"] == "w-doomed"
    farm.add_worker("w-survivor", ["amd64"])
    farm.workers["w-doomed"].stop(signal.SIGKILL)
    build = farm.master.wait_build(build_id, timeout=90)
    (job,) = build["jobs"]
    assert job["status"] == "success", job
    assert job["worker"] == "w-survivor"
    assert job["attempt"] == 2
    log = farm.master.api("GET", f"/api/v1/builds/{build_id}/packages/itest-slow/log").text
    assert "attempt 2" in log and "slow build ends" in log
    assert_consistent(farm.master, tmp_path / "apt")


def test_terminated_worker_finishes_its_build_and_takes_no_new_one(farm, tmp_path):
    worker = farm.add_worker("w-leaving", ["amd64"])
    slow = farm.master.submit(["itest-slow"])
    wait_building(farm, slow)
    queued_after = farm.master.submit(["itest-all"])
    worker.stop(signal.SIGTERM)  # warm shutdown: returns when the worker has exited
    (job,) = farm.master.wait_build(slow, timeout=30)["jobs"]
    assert (job["status"], job["worker"], job["attempt"]) == ("success", "w-leaving", 1)
    assert job_of(farm, queued_after)["status"] == "queued"
    farm.add_worker("w-next", ["amd64"])
    (later,) = farm.master.wait_build(queued_after, timeout=60)["jobs"]
    assert (later["status"], later["worker"]) == ("success", "w-next")
    assert_consistent(farm.master, tmp_path / "apt")


def test_hung_build_is_stopped_by_its_time_limit(tmp_path):
    farm = Farm(tmp_path, extra_master={"lease_seconds": LEASE},
                extra_worker={"build_timeout": 3})
    try:
        farm.start({"w-limited": ["amd64"]})
        build = farm.master.wait_build(farm.master.submit(["itest-hang"]), timeout=60)
        (job,) = build["jobs"]
        assert job["status"] == "failed"
        assert "longer than its limit of 3 s" in job["error"]
        log = farm.master.api("GET", f"/api/v1/builds/{build['id']}/packages/itest-hang/log")
        assert "about to hang" in log.text
        # The worker is free again: the next build runs.
        assert farm.master.wait_build(farm.master.submit(["itest-all"]))["status"] == "success"
        assert_consistent(farm.master, tmp_path / "apt")
    finally:
        farm.stop()


def test_redis_restarted_empty_loses_no_build(farm, tmp_path):
    master = farm.master
    # Queued while no worker runs: the messages sit in Redis, and Redis loses them.
    queued = [master.submit(["itest-all"]), master.submit(["itest-amd64"])]
    time.sleep(3)  # the master's housekeeping has set its marker in this Redis
    farm.redis.restart_empty()
    # Accepted while Redis is empty or down: recorded, sent when it can be.
    queued.append(master.submit(["itest-arm64"]))
    farm.add_worker("w-amd64", ["amd64"])
    farm.add_worker("w-arm64", ["arm64"])
    slow = master.submit(["itest-slow"])
    wait_building(farm, slow)
    # Redis dies again in the middle of a running build.
    farm.redis.restart_empty()
    for build_id in [*queued, slow]:
        build = master.wait_build(build_id, timeout=120)
        assert build["status"] == "success", build
    # Master and workers reconnected by themselves: a new build goes through.
    assert master.wait_build(master.submit(["itest-bdep"]), timeout=60)["status"] == "success"
    assert_consistent(farm.master, tmp_path / "apt")


def test_master_crash_mid_upload_leaves_no_partial_file(farm, tmp_path):
    master = farm.master
    pool = farm.data_dir / "repo" / "pool"
    before = sorted(p.name for p in pool.rglob("*.deb"))
    deb = make_deb(tmp_path, "itest-partial", "1.0-1", payload=b"x" * 2_000_000)
    body = deb.read_bytes()
    credentials = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    request = (
        f"PUT /api/v1/upload?filename={deb.name}&sha256={hashlib.sha256(body).hexdigest()} "
        f"HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {credentials}\r\n"
        f"Content-Length: {len(body)}\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", farm.port), timeout=10) as s:
        s.sendall(request + body[: len(body) // 2])
        incoming = farm.data_dir / "incoming"
        wait_for(lambda: list(incoming.glob("upload-*.part")), 10, "the upload to start")
        master.crash()
    assert sorted(p.name for p in pool.rglob("*.deb")) == before
    master.start()
    assert not list((farm.data_dir / "incoming").glob("upload-*.part"))
    assert "itest-partial" not in master.index("amd64")
    assert_consistent(master, tmp_path / "apt")


def test_master_restart_during_build_worker_retries_upload(farm, tmp_path):
    master = farm.master
    farm.add_worker("w-patient", ["amd64"])
    build_id = master.submit(["itest-slow"])
    wait_building(farm, build_id)
    master.crash()
    # The build ends while the master is away; the worker's upload waits and retries.
    time.sleep(10)
    master.start()
    (job,) = master.wait_build(build_id, timeout=120)["jobs"]
    assert (job["status"], job["worker"], job["attempt"]) == ("success", "w-patient", 1)
    worker_log = farm.workers["w-patient"].log.read_text()
    assert "retrying in" in worker_log
    assert_consistent(master, tmp_path / "apt")

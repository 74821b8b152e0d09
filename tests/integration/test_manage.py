"""Managing builds on a running farm: cycles refused, live logs, cancel, removal."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from tests.integration.conftest import Farm
from tests.integration.farm import BIN, PASSWORD, AptClient, parse_packages, wait_for


@pytest.fixture(scope="module")
def farm(tmp_path_factory) -> Iterator[Farm]:
    f = Farm(tmp_path_factory.mktemp("manage"), extra_master={"lease_seconds": 6})
    try:
        f.start({"w-manage": ["amd64"]})
        yield f
    finally:
        f.stop()


def test_cycle_is_refused_naming_its_packages(farm):
    before = farm.master.api("GET", "/api/v1/builds").json()["builds"]
    resp = farm.master.api("POST", "/api/v1/builds",
                           json={"packages": ["itest-all", "itest-cyc-a", "itest-cyc-b"]})
    assert resp.status_code == 422
    body = resp.json()
    assert "cycle" in body["error"]
    assert set(body["cycle"]) == {"itest-cyc-a", "itest-cyc-b"}
    assert farm.master.api("GET", "/api/v1/builds").json()["builds"] == before


def test_followed_log_shows_lines_before_the_build_ends(farm):
    master = farm.master
    build_id = master.submit(["itest-slow"])
    url = f"{master.url}/api/v1/builds/{build_id}/packages/itest-slow/log?follow=1"
    seen: list[tuple[float, str]] = []

    def read() -> None:
        with requests.get(url, auth=("reader", PASSWORD), stream=True, timeout=60) as resp:
            for line in resp.iter_lines(decode_unicode=True):
                seen.append((time.monotonic(), line))
    reader = threading.Thread(target=read)
    reader.start()
    wait_for(lambda: any("slow build starts" in line for _, line in seen), 30,
             "the first lines of the log")
    status = master.api("GET", f"/api/v1/builds/{build_id}").json()["status"]
    assert status == "building"  # lines arrived while the build still ran
    reader.join(timeout=60)
    assert not reader.is_alive()  # the stream ended with the build
    assert any("slow build ends" in line for _, line in seen)
    assert master.api("GET", f"/api/v1/builds/{build_id}").json()["status"] == "success"

    # The same from a terminal, after the fact.
    out = subprocess.run([str(BIN / "master"), "logs", str(build_id), "itest-slow", "--follow",
                          "--config", str(farm.config)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "slow build starts" in out.stdout and "slow build ends" in out.stdout


def test_cancel_stops_a_running_build_on_its_worker(farm):
    master = farm.master
    build_id = master.submit(["itest-slow"])
    wait_for(lambda: master.api("GET", f"/api/v1/builds/{build_id}").json()["status"]
             == "building", 30, "the build to start")
    time.sleep(1)
    resp = master.api("POST", f"/api/v1/builds/{build_id}/cancel", user="builder")
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "cancelled"
    worker_log = farm.workers["w-manage"].log
    wait_for(lambda: "was taken away by the master; stopping it" in worker_log.read_text(), 15,
             "the worker to stop the build")
    time.sleep(8)  # past the script's own end: had it gone on, it would have finished by now
    build = master.api("GET", f"/api/v1/builds/{build_id}").json()
    assert build["status"] == "cancelled"
    log = master.api("GET", f"/api/v1/builds/{build_id}/packages/itest-slow/log").text
    assert "slow build starts" in log and "slow build ends" not in log
    # The worker goes on with other work.
    assert master.wait_build(master.submit(["itest-all"]))["status"] == "success"


def test_remove_a_package_from_the_repository(farm, tmp_path):
    master = farm.master
    assert master.wait_build(master.submit(["itest-amd64"]))["status"] == "success"
    assert "Package: itest-amd64" in master.index("amd64")
    assert master.api("DELETE", "/api/v1/packages/itest-amd64",
                      user="builder").status_code == 403
    resp = master.api("DELETE", "/api/v1/packages/itest-amd64")
    assert resp.status_code == 200, resp.text
    assert resp.json()["removed"] == ["itest-amd64_1.0-1_amd64.deb"]
    assert "itest-amd64" not in {s["Package"] for s in parse_packages(master.index("amd64"))}
    assert not list((farm.data_dir / "repo" / "pool").rglob("itest-amd64_*"))
    assert master.api("DELETE", "/api/v1/packages/itest-amd64").status_code == 404
    # apt still accepts the repository without it.
    AptClient(tmp_path / "apt", f"deb [trusted=yes] {master.url}/repo stable main").update()

"""GET /metrics through a real Prometheus server: a master with two gunicorn processes, a
real worker and Redis build one package that succeeds and one that fails; Prometheus scrapes
the master every second with a bearer token, and the values are read back through its HTTP
API. Also who may read the metrics.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import Farm
from tests.integration.farm import PASSWORD, wait_for
from tests.integration.prom import Prometheus

TOKEN_ENV = "PKGFARM_TEST_METRICS_TOKEN"
TOKEN = "metrics-token-for-the-test-0123456789"


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    root = tmp_path_factory.mktemp("metrics")
    old = os.environ.get(TOKEN_ENV)
    os.environ[TOKEN_ENV] = TOKEN  # the master reads it from its environment at start
    f = Farm(root, extra_master={"processes": 2,
                                 "metrics": {"role": "read", "token_env": TOKEN_ENV}})
    try:
        f.start({"m-amd64": ["amd64"]})
        yield f
    finally:
        f.stop()
        if old is None:
            os.environ.pop(TOKEN_ENV, None)
        else:
            os.environ[TOKEN_ENV] = old


@pytest.fixture(scope="module")
def prometheus(farm: Farm) -> Iterator[Prometheus]:
    prom = Prometheus(farm.root / "prometheus", f"127.0.0.1:{farm.port}",
                      auth={"authorization": {"type": "Bearer", "credentials": TOKEN}})
    prom.start()
    try:
        yield prom
    finally:
        prom.stop()


def settle(prom: Prometheus, expr: str, expected: float, timeout: float = 30) -> float:
    """Wait until Prometheus has scraped ``expr`` up to ``expected``; the value then."""
    wait_for(lambda: (prom.value(expr) or 0) >= expected, timeout,
             f"{expr} to reach {expected} (now {prom.value(expr)})", interval=0.5)
    value = prom.value(expr)
    assert value is not None
    return value


def test_values_reach_prometheus(farm: Farm, prometheus: Prometheus) -> None:
    master = farm.master
    assert master is not None
    ok = master.wait_build(master.submit(["itest-amd64"]))
    assert ok["status"] == "success", ok
    bad = master.wait_build(master.submit(["itest-fail"]))
    assert bad["status"] == "failed", bad

    # Prometheus reaches the master, with the token.
    settle(prometheus, 'up{job="pkgfarm"}', 1)

    # Builds and jobs finished by outcome: counted by the store, whichever process answers.
    assert settle(prometheus, 'sum(pkgfarm_jobs_finished_total{outcome="success"})', 1) == 1
    assert settle(prometheus, 'sum(pkgfarm_jobs_finished_total{outcome="failed"})', 1) == 1
    assert prometheus.value('pkgfarm_jobs_finished_total{arch="amd64",format="deb",'
                            'outcome="success"}') == 1
    assert prometheus.value('pkgfarm_jobs_finished_total{arch="all",format="deb",'
                            'outcome="failed"}') == 1
    assert prometheus.value('pkgfarm_builds_finished_total{outcome="success"}') == 1
    assert prometheus.value('pkgfarm_builds_finished_total{outcome="failed"}') == 1
    assert prometheus.value('pkgfarm_jobs{state="success"}') == 1
    assert prometheus.value('pkgfarm_jobs{state="failed"}') == 1
    assert prometheus.value('pkgfarm_jobs{state="queued"}') == 0
    # The two jobs' build times and queue waits, by architecture.
    assert prometheus.value("sum(pkgfarm_job_duration_seconds_count)") == 2
    assert prometheus.value('pkgfarm_job_duration_seconds_count{arch="amd64",'
                            'outcome="success"}') == 1
    assert prometheus.value('pkgfarm_queue_wait_seconds_count{arch="all"}') == 1
    duration = prometheus.value('pkgfarm_job_duration_seconds_sum{arch="amd64"}')
    assert duration is not None and 0 < duration < 180
    # Queues are empty now, the one worker is online, nothing lost a lease.
    assert prometheus.value('pkgfarm_queue_length{queue="build.amd64"}') == 0
    assert prometheus.value('pkgfarm_queue_length{queue="build.all"}') == 0
    assert prometheus.value("pkgfarm_broker_up") == 1
    assert prometheus.value('pkgfarm_workers_online{arch="amd64"}') == 1
    assert prometheus.value('pkgfarm_workers_online{arch="arm64"}') == 0
    assert prometheus.value("sum(pkgfarm_lease_expiries_total)") in (None, 0)
    # The worker's upload of the successful build (per process, added up), the index it made.
    assert (prometheus.value('sum(pkgfarm_uploads_total{format="deb",result="accepted"})')
            or 0) >= 1
    deb = [f for f in ok["jobs"][0]["files"] if f.endswith(".deb")]
    assert deb, ok
    uploaded = prometheus.value('sum(pkgfarm_upload_bytes_total{result="accepted"})') or 0
    assert uploaded >= 500, uploaded  # at least the size of a small .deb
    assert (prometheus.value("sum(pkgfarm_index_update_duration_seconds_count)") or 0) >= 2


def test_a_waiting_job_is_a_queue_length(farm: Farm, prometheus: Prometheus) -> None:
    """A job no worker takes (this farm builds amd64 only) waits in build.arm64: Prometheus
    reads its queue's length from the master, as the API gives it."""
    master = farm.master
    assert master is not None
    build_id = master.submit(["itest-arm64"])
    try:
        assert settle(prometheus, 'pkgfarm_queue_length{queue="build.arm64"}', 1) == 1
        queues = {q["name"]: q["length"]
                  for q in master.api("GET", "/api/v1/queues").json()["queues"]}
        assert queues["build.arm64"] == 1
        assert prometheus.value('pkgfarm_queue_length{queue="build.amd64"}') == 0
        assert settle(prometheus, 'pkgfarm_jobs{state="queued"}', 1) == 1
    finally:
        cancelled = master.api("POST", f"/api/v1/builds/{build_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text


def test_http_requests_of_every_process_add_up(farm: Farm, prometheus: Prometheus) -> None:
    """Requests answered by both gunicorn processes are counted once each, exactly."""
    master = farm.master
    assert master is not None
    metrics_dir = farm.data_dir / "metrics"
    sent = 0
    lock = threading.Lock()

    def burst() -> None:
        nonlocal sent
        # New connections each time, so that both processes accept some.
        resp = requests.get(master.url + "/api/v1/builds/987654", auth=("reader", PASSWORD),
                            timeout=30)
        assert resp.status_code == 404, resp.text
        with lock:
            sent += 1

    def counting_processes() -> set[str]:
        return {p.name for p in metrics_dir.glob("counter_*.db")}

    for _round in range(20):
        threads = [threading.Thread(target=burst) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Every gunicorn process that answered a request keeps a counter file of its own.
        if len(counting_processes()) >= 2 and sent >= 50:
            break
    assert len(counting_processes()) >= 2, counting_processes()
    expr = 'sum(pkgfarm_http_requests_total{endpoint="builds.get_build",status="404"})'
    assert settle(prometheus, expr, sent) == sent
    # A scrape answered by any process says the same.
    for _ in range(6):
        text = requests.get(master.url + "/metrics", timeout=10,
                            headers={"Authorization": f"Bearer {TOKEN}"}).text
        line = [x for x in text.splitlines() if x.startswith("pkgfarm_http_requests_total{")
                and 'endpoint="builds.get_build"' in x and 'status="404"' in x]
        assert len(line) == 1, line
        assert float(line[0].rsplit(" ", 1)[1]) == sent


@pytest.mark.parametrize(("headers", "auth", "status"), [
    ({}, None, 401),
    ({"Authorization": "Bearer not-the-token"}, None, 401),
    ({"Authorization": f"Bearer {TOKEN}"}, None, 200),
    ({}, ("reader", "wrong-password"), 401),
    ({}, ("builder", PASSWORD), 403),      # the build role is not the configured read role
    ({}, ("reader", PASSWORD), 200),
    ({}, ("admin", PASSWORD), 200),
])
def test_who_may_read_the_metrics(farm: Farm, headers: dict[str, str],
                                  auth: tuple[str, str] | None, status: int) -> None:
    master = farm.master
    assert master is not None
    resp = requests.get(master.url + "/metrics", headers=headers, auth=auth, timeout=10)
    assert resp.status_code == status, resp.text
    if status == 200:
        assert resp.headers["Content-Type"].startswith("text/plain")
        assert "# HELP pkgfarm_jobs Jobs now in each state" in resp.text
        assert "# TYPE pkgfarm_jobs_finished_total counter" in resp.text
    else:
        assert resp.json()["error"] in ("authentication required", "permission denied")
        assert "pkgfarm_jobs" not in resp.text


def test_a_missing_token_variable_stops_the_master(tmp_path: Path) -> None:
    import subprocess

    import yaml

    from tests.integration.farm import BIN, free_port, write_config

    config = write_config(tmp_path / "config.yaml", data_dir=tmp_path / "data",
                          port=free_port(), broker_url="redis://127.0.0.1:1/0",
                          package_paths=[],
                          extra_master={"metrics": {"token_env": "PKGFARM_TEST_UNSET_TOKEN"}})
    assert yaml.safe_load(config.read_text())["master"]["metrics"]
    env = {k: v for k, v in os.environ.items() if k != "PKGFARM_TEST_UNSET_TOKEN"}
    result = subprocess.run([str(BIN / "master"), "serve", "--config", str(config)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "master.metrics.token_env" in result.stderr + result.stdout

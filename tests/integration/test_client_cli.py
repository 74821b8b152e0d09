"""The ``master`` command's client commands, run as a user runs them: the console script in a
subprocess, with a config whose ``client`` section (or the environment) holds the credentials,
against a real farm (redis-server, the master under gunicorn, a worker)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import Farm
from tests.integration.farm import BIN, PASSWORD, stop_process, wait_for


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    f = Farm(tmp_path_factory.mktemp("client-cli"))
    try:
        f.start({"cli-box": ["amd64"]})
        yield f
    finally:
        f.stop()


def master(farm: Farm, *args: str, env: dict[str, str] | None = None,
           config: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "master"), *args, "--config", str(config or farm.config)],
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})})


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def client_config(farm: Farm, tmp_path: Path, **client: Any) -> Path:
    """The farm's config with another client section."""
    data = yaml.safe_load(farm.config.read_text())
    data["client"] = {"url": farm.master.url, **client}
    path = tmp_path / "client.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_version_of_both_commands():
    for command in ("master", "worker"):
        result = subprocess.run([str(BIN / command), "--version"], capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 0
        assert result.stdout.startswith(f"{command}, version ")


def test_package_add_build_builds_and_logs(farm):
    added = master(farm, "package-add", "itest-amd64", "--arch", "amd64")
    build_id = int(ok(added).strip())
    assert "queued itest-amd64 1.0-1 for amd64" in added.stderr
    farm.master.wait_build(build_id)

    shown = ok(master(farm, "build", str(build_id)))
    lines = shown.splitlines()
    assert lines[0].startswith(f"build {build_id}: success (asked by admin")
    header = lines[1].split()
    assert header[:6] == ["JOB", "PACKAGE", "VERSION", "ARCH", "STATE", "WORKER"]
    row = lines[2].split()
    assert row[1:6] == ["itest-amd64", "1.0-1", "amd64", "success", "cli-box"]
    # The table's columns line up: every cell starts where its header does.
    assert lines[2].index("itest-amd64") == lines[1].index("PACKAGE")
    assert lines[2].index("success") == lines[1].index("STATE")

    as_json = json.loads(ok(master(farm, "build", str(build_id), "--json")))
    assert as_json["id"] == build_id and as_json["jobs"][0]["worker"] == "cli-box"

    log = ok(master(farm, "logs", str(build_id), "itest-amd64"))
    assert "building itest-amd64 1.0-1 for amd64" in log
    follow = ok(master(farm, "logs", str(build_id), "itest-amd64", "--follow"))
    assert follow == log


def test_builds_filters_and_paging(farm):
    good = int(ok(master(farm, "package-add", "itest-all")).strip())
    bad = int(ok(master(farm, "package-add", "itest-fail")).strip())
    farm.master.wait_build(good)
    farm.master.wait_build(bad)

    failed = json.loads(ok(master(farm, "builds", "--state", "failed", "--json")))
    assert bad in [b["id"] for b in failed["builds"]]
    assert good not in [b["id"] for b in failed["builds"]]
    assert all(b["status"] == "failed" for b in failed["builds"])
    assert failed["total"] == len(failed["builds"])

    by_package = json.loads(ok(master(farm, "builds", "--package", "itest-all", "--json")))
    assert by_package["builds"][0]["id"] == good
    assert {p for b in by_package["builds"] for p in b["packages"]} == {"itest-all"}
    assert json.loads(ok(master(farm, "builds", "--requester", "nobody", "--json"))) \
        ["total"] == 0
    assert json.loads(ok(master(farm, "builds", "--arch", "arm64", "--json")))["total"] == 0

    everything = json.loads(ok(master(farm, "builds", "--limit", "1000", "--json")))
    page = json.loads(ok(master(farm, "builds", "--limit", "1", "--offset", "1", "--json")))
    assert page["total"] == everything["total"] >= 2
    assert [b["id"] for b in page["builds"]] == [everything["builds"][1]["id"]]

    listing = master(farm, "builds", "--state", "failed")
    lines = ok(listing).splitlines()
    assert lines[0].split() == ["ID", "STATUS", "PACKAGES", "REQUESTER", "ARCHES", "CREATED"]
    assert any(line.split()[:3] == [str(bad), "failed", "itest-fail"] for line in lines[1:])
    assert f"of {failed['total']})" in listing.stderr

    refused = master(farm, "builds", "--state", "sleeping")
    assert refused.returncode == 1
    assert "state must be one of" in refused.stderr


def test_restart_and_cancel(farm):
    bad = int(ok(master(farm, "package-add", "itest-fail")).strip())
    farm.master.wait_build(bad)
    restarted = ok(master(farm, "restart", str(bad)))
    assert restarted.startswith(f"build {bad}: ") and "(restarted: 1 job(s))" in restarted
    build = farm.master.wait_build(bad)
    assert build["jobs"][0]["attempt"] == 2
    slow = int(ok(master(farm, "package-add", "itest-slow")).strip())
    cancelled = ok(master(farm, "cancel", str(slow), "--json"))
    assert json.loads(cancelled)["status"] == "cancelled"


def test_workers_drain_and_queues(farm, tmp_path):
    workers = ok(master(farm, "workers")).splitlines()
    assert workers[0].split() == ["NAME", "ARCHES", "SLOTS", "STATE", "BUILDING", "HEARTBEAT"]
    assert workers[1].split()[:4] == ["cli-box", "amd64", "1", "active"]

    assert ok(master(farm, "worker-drain", "cli-box")).strip() == "cli-box: drained"
    assert ok(master(farm, "worker-drain", "cli-box")).strip() == "cli-box: drained (already)"
    listed = json.loads(ok(master(farm, "workers", "--json")))["workers"]
    assert [(w["name"], w["drained"]) for w in listed] == [("cli-box", True)]
    assert ok(master(farm, "worker-resume", "cli-box")).strip() == "cli-box: active"
    missing = master(farm, "worker-drain", "nobody-here")
    assert missing.returncode == 1 and "no worker 'nobody-here'" in missing.stderr

    assert ok(master(farm, "queue-pause", "build.all")).strip() == "build.all: paused"
    queues = ok(master(farm, "queues")).splitlines()
    assert queues[0].split() == ["QUEUE", "LENGTH", "STATE"]
    states = {line.split()[0]: line.split()[2] for line in queues[1:]}
    assert states == {"build.all": "paused", "build.amd64": "running",
                      "build.arm64": "running"}
    assert ok(master(farm, "queue-resume", "build.all")).strip() == "build.all: running"
    status = ok(master(farm, "status"))
    assert f"master:      {farm.master.url} (ok, broker ok)" in status
    assert "workers:     1 online" in status
    assert "build.all" in status

    # A reader may look, not act: the master's refusal is the command's error.
    reader = client_config(farm, tmp_path, user="reader", password=PASSWORD)
    assert "cli-box" in ok(master(farm, "workers", config=reader))
    refused = master(farm, "queue-pause", "build.all", config=reader)
    assert refused.returncode == 1
    assert "master: error: permission denied" in refused.stderr


def test_credentials_from_the_environment_or_missing(farm, tmp_path):
    bare = client_config(farm, tmp_path)
    missing = master(farm, "builds", config=bare)
    assert missing.returncode == 1
    assert "authentication required" in missing.stderr
    assert "client.user and client.password" in missing.stderr
    from_env = master(farm, "builds", "--json", config=bare,
                      env={"PKGFARM_CLIENT_USER": "reader", "PKGFARM_CLIENT_PASSWORD": PASSWORD})
    assert json.loads(ok(from_env))["total"] >= 1
    wrong = master(farm, "builds", config=bare,
                   env={"PKGFARM_CLIENT_USER": "reader", "PKGFARM_CLIENT_PASSWORD": "nope"})
    assert wrong.returncode == 1 and "master: error:" in wrong.stderr
    half = client_config(farm, tmp_path, user="reader")
    bad_config = master(farm, "builds", config=half)
    assert bad_config.returncode != 0 and "client.password" in bad_config.stderr


def test_events_follow_json_prints_a_build_as_it_happens(farm):
    newest = farm.master.api("GET", "/api/v1/events/list").json()["newest_id"]
    proc = subprocess.Popen([str(BIN / "master"), "events", "--follow", "--json", "--after",
                             str(newest), "--config", str(farm.config)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: list[dict[str, Any]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(json.loads(line))
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        build_id = int(ok(master(farm, "package-add", "itest-all")).strip())
        wait_for(lambda: any(e["kind"] == "build.finished" and e["build_id"] == build_id
                             for e in lines), 120, "build.finished from `master events`")
    finally:
        stop_process(proc, signal.SIGTERM)
        reader.join(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
    mine = [e["kind"] for e in lines if e.get("build_id") == build_id]
    assert mine == ["build.created", "job.queued", "job.started", "upload.accepted",
                    "job.finished", "build.finished"]
    assert [e["id"] for e in lines] == sorted(e["id"] for e in lines)
    assert lines[0]["id"] == newest + 1

    # The same events afterwards, as a table and as JSON lines.
    table = ok(master(farm, "events", "--build", str(build_id))).splitlines()
    assert table[0].split() == ["ID", "TIME", "KIND", "BUILD", "JOB", "DETAILS"]
    assert [line.split()[3] for line in table[1:]] == mine
    finished = [json.loads(line) for line in ok(master(
        farm, "events", "--json", "--kinds", "build.finished", "--build",
        str(build_id))).splitlines()]
    assert [(e["kind"], e["state"]) for e in finished] == [("build.finished", "success")]


def test_worker_package_add_now_shows_each_step(farm):
    result = subprocess.run([str(BIN / "worker"), "package-add", "itest-now", "--now",
                             "--config", str(farm.config)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert all(line[1:].split("s]", 1)[0].strip().replace(".", "").isdigit()
               for line in steps), steps
    said = [line.split("] ", 1)[1] for line in steps]

    def first(prefix: str) -> int:
        return next(i for i, line in enumerate(said) if line.startswith(prefix))
    assert first("building itest-now") < first("uploaded itest-now_") < first("publishing:")
    assert "itest-now_2.0-1_amd64.deb is in" in result.stdout

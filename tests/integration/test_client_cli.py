"""The ``master`` command's client commands, run as a user runs them: the console script in a
subprocess, with a config whose ``client`` section (or the environment) holds the credentials,
against a real farm (redis-server, the master under gunicorn, a worker)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import Farm
from tests.integration.farm import (
    BIN,
    PASSWORD,
    TEST_PACKAGES,
    JsonLines,
    stop_process,
    wait_for,
)
from tests.integration.hooks import Receiver

#: A package only this module builds, promotes and removes.
CLI_PACKAGE = """\
package:
  name: itest-clipkg
  version: 1.0
  release: 1
  architecture: all
  description: |
    A package for the client commands' tests
  maintainer: pkgfarm tests <tests@example.org>
build: |
  mkdir -p "$DESTDIR/usr/share/itest-clipkg"
  echo made > "$DESTDIR/usr/share/itest-clipkg/marker"
"""


HOOK_SECRET = "client-cli-hook-secret-0123456789"


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Farm]:
    root = tmp_path_factory.mktemp("client-cli")
    own = root / "packages"
    own.mkdir()
    (own / "itest-clipkg.yaml").write_text(CLI_PACKAGE)
    hooks = [{"name": "cli-hook", "url": receiver.url, "events": ["build.finished"],
              "secret": HOOK_SECRET, "timeout": 5, "backoff": 0.5}]
    f = Farm(root, extra_master={"webhooks": hooks}, extra={
        "package_paths": [str(TEST_PACKAGES), str(own)],
        "repository": {"suite": "stable", "suites": ["testing"], "component": "main",
                       "architectures": ["amd64", "arm64"]}})
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
    assert workers[0].split() == ["NAME", "ARCHES", "QUEUES", "SLOTS", "STATE", "BUILDING",
                                  "HEARTBEAT", "DONE-24H", "FAILED-24H"]
    assert workers[1].split()[:5] == ["cli-box", "amd64", "build.amd64,build.all", "1",
                                      "active"]

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


def finished_by(farm: Farm, worker: str) -> dict[str, int]:
    """The jobs ``worker`` finished in the last 24 hours, by outcome, as the builds say."""
    assert farm.master is not None
    builds = farm.master.api("GET", "/api/v1/builds", params={"limit": 1000}).json()["builds"]
    counts = {"done": 0, "failed": 0}
    for job in (j for b in builds for j in b["jobs"]):
        if job["worker"] == worker and job["status"] in ("success", "failed"):
            counts["done" if job["status"] == "success" else "failed"] += 1
    return counts


def test_workers_show_what_they_build_since_when_and_their_day(farm):
    bad = int(ok(master(farm, "package-add", "itest-fail")).strip())
    assert farm.master.wait_build(bad)["status"] == "failed"
    slow = int(ok(master(farm, "package-add", "itest-slow")).strip())
    wait_for(lambda: farm.master.api("GET", f"/api/v1/builds/{slow}").json()["status"]
             == "building", 60, "the slow build to start")
    time.sleep(1.5)
    before = finished_by(farm, "cli-box")
    (box,) = json.loads(ok(master(farm, "workers", "--json")))["workers"]
    assert box["queues"] == ["build.amd64", "build.all"]
    (job,) = box["building"]
    assert (job["build_id"], job["package"], job["arch"]) == (slow, "itest-slow", "all")
    assert 1 <= job["seconds"] < 60 and job["started_at"]
    assert box["last_24h"] == before
    assert before["failed"] >= 1
    lines = ok(master(farm, "workers")).splitlines()
    assert f" itest-slow/all (build {slow}, " in lines[1]
    assert lines[1].index("itest-slow") == lines[0].index("BUILDING")
    assert lines[1].split()[-2:] == [str(before["done"]), str(before["failed"])]
    assert farm.master.wait_build(slow)["status"] == "success"
    (box,) = json.loads(ok(master(farm, "workers", "--json")))["workers"]
    assert box["building"] == []
    assert box["last_24h"] == {"done": before["done"] + 1, "failed": before["failed"]}


def test_packages_package_promote_and_remove(farm, tmp_path):
    build_id = int(ok(master(farm, "package-add", "itest-clipkg")).strip())
    assert farm.master.wait_build(build_id)["status"] == "success"
    filename = "itest-clipkg_1.0-1_all.deb"

    listing = ok(master(farm, "packages")).splitlines()
    assert listing[0].split() == ["NAME", "VERSION", "ARCH", "FORMAT", "SUITE", "SIZE",
                                  "UPLOADED", "BY", "INDEXED"]
    mine = [line.split() for line in listing[1:] if line.startswith("itest-clipkg ")]
    assert [row[:5] for row in mine] == [["itest-clipkg", "1.0-1", "all", "deb", "stable"]]
    assert mine[0][-1] == "yes"
    only = json.loads(ok(master(farm, "packages", "--name", "itest-clipkg", "--json")))
    assert [(p["filename"], p["suite"], p["in_index"]) for p in only["packages"]] == [
        (filename, "stable", True)]

    shown = ok(master(farm, "package", "itest-clipkg")).splitlines()
    assert shown[0] == "itest-clipkg: published"
    assert shown[1].split() == ["SUITE", "VERSION", "ARCH", "FORMAT", "FILE", "MADE-BY"]
    assert shown[2].split() == ["stable", "1.0-1", "all", "deb", filename, "build",
                                str(build_id)]
    assert "build history: 1 finished, 100 % succeeded" in shown
    at = shown.index("build history: 1 finished, 100 % succeeded")
    assert shown[at + 1].split() == ["BUILD", "VERSION", "ARCH", "FORMAT", "STATE", "WORKER",
                                     "ATTEMPT", "FINISHED", "TOOK"]
    history = shown[at + 2].split()
    assert history[:8] == ["build", str(build_id), "1.0-1", "all", "deb", "success",
                           "cli-box", "1"]
    assert history[-1].endswith("s")
    data = json.loads(ok(master(farm, "package", "itest-clipkg", "--json")))
    (version,) = data["versions"]
    assert (version["build_id"], version["suites"]) == (build_id, ["stable"])
    assert data["success_rate"] == 1.0 and data["finished"] == 1
    assert [j["build_id"] for j in data["history"]] == [build_id]
    assert data["history"][0]["seconds"] > 0

    # A package that only ever failed: a history, a rate of 0, no versions.
    bad = int(ok(master(farm, "package-add", "itest-fail")).strip())
    farm.master.wait_build(bad)
    failing = json.loads(ok(master(farm, "package", "itest-fail", "--json")))
    assert failing["versions"] == [] and failing["success_rate"] == 0.0
    assert failing["finished"] == len(failing["history"]) >= 1
    assert bad in [j["build_id"] for j in failing["history"]]
    text = ok(master(farm, "package", "itest-fail"))
    assert "(in no suite)" in text and "% succeeded" in text and " 0 % succeeded" in text
    unknown = master(farm, "package", "no-such-package")
    assert unknown.returncode == 1 and "the farm knows no package" in unknown.stderr

    # Promote to testing: the same archive is in testing's index too.
    reader = client_config(farm, tmp_path, user="reader", password=PASSWORD)
    refused = master(farm, "package-promote", "itest-clipkg", "1.0-1", "--from", "stable", "--to",
                     "testing", config=reader)
    assert refused.returncode == 1 and "permission denied" in refused.stderr
    unserved = master(farm, "package-promote", "itest-clipkg", "1.0-1", "--from", "stable",
                      "--to", "testing", "--format", "rpm")
    assert unserved.returncode == 1 and "rpm" in unserved.stderr, unserved.stderr
    assert "itest-clipkg" not in farm.master.index("amd64", suite="testing")
    promoted = ok(master(farm, "package-promote", "itest-clipkg", "1.0-1", "--from", "stable",
                         "--to", "testing", "--format", "deb")).splitlines()
    assert promoted == ["promoted itest-clipkg 1.0-1 from stable to testing:",
                        f"  {filename}"]
    assert filename in farm.master.index("amd64", suite="testing")
    data = json.loads(ok(master(farm, "package", "itest-clipkg", "--json")))
    assert sorted(data["versions"][0]["suites"]) == ["stable", "testing"]
    rows = [line.split() for line in ok(master(farm, "package", "itest-clipkg")).splitlines()
            if line.split()[:1] in (["stable"], ["testing"])]
    assert [row[0] for row in rows] == ["stable", "testing"]
    nowhere = master(farm, "package-promote", "itest-clipkg", "1.0-1", "--from", "stable", "--to",
                     "nowhere")
    assert nowhere.returncode == 1 and "no suite 'nowhere'" in nowhere.stderr

    # Remove it: gone from both indexes and from the package list; its history stays.
    assert master(farm, "package-remove", "itest-clipkg", config=reader).returncode == 1
    unserved = master(farm, "package-remove", "itest-clipkg", "--format", "pacman")
    assert unserved.returncode == 1 and "pacman" in unserved.stderr, unserved.stderr
    removed = json.loads(ok(master(farm, "package-remove", "itest-clipkg", "--version", "1.0-1",
                                   "--format", "deb", "--json")))
    assert removed == {"removed": [filename]}
    for suite in ("stable", "testing"):
        for arch in ("amd64", "arm64"):
            assert "itest-clipkg" not in farm.master.index(arch, suite=suite)
    assert json.loads(ok(master(farm, "packages", "--name", "itest-clipkg", "--json"))) \
        == {"packages": []}
    data = json.loads(ok(master(farm, "package", "itest-clipkg", "--json")))
    assert data["versions"] == [] and [j["build_id"] for j in data["history"]] == [build_id]
    again = master(farm, "package-remove", "itest-clipkg")
    assert again.returncode == 1 and "the repository holds no itest-clipkg" in again.stderr


def test_webhooks_and_their_deliveries(farm, receiver, tmp_path):
    build_id = int(ok(master(farm, "package-add", "itest-all")).strip())
    farm.master.wait_build(build_id)

    def delivered() -> dict[str, Any] | None:
        hooks = json.loads(ok(master(farm, "webhooks", "--json")))["webhooks"]
        found = [d for d in hooks[0]["deliveries"] if d["build_id"] == build_id]
        return found[0] if found and found[0]["state"] == "delivered" else None
    delivery = wait_for(delivered, 60, f"build {build_id}'s notification delivered")
    assert delivery["event"] == "build.finished" and delivery["last_status"] == 200

    lines = ok(master(farm, "webhooks")).splitlines()
    assert lines[0].split() == ["HOOK", "URL", "EVENTS", "DELIVERED", "PENDING", "FAILED"]
    hook = lines[1].split()
    assert hook[:3] == ["cli-hook", receiver.url, "build.finished"]
    assert int(hook[3]) >= 1 and hook[5] == "0"
    assert lines[2] == ""
    assert lines[3].split() == ["HOOK", "DELIVERY", "EVENT", "BUILD", "STATE", "TRIES",
                                "RESULT", "LAST-TRY", "NEXT-TRY"]
    row = next(line for line in lines[4:] if f" {delivery['id']} " in line)
    assert row.split()[:8] == ["cli-hook", delivery["id"], "build.finished", str(build_id),
                               "delivered", "1", "HTTP", "200"]
    assert row.split()[-1] == "-"  # nothing more to try
    limited = json.loads(ok(master(farm, "webhooks", "--limit", "1", "--json")))
    assert len(limited["webhooks"][0]["deliveries"]) == 1
    assert HOOK_SECRET not in json.dumps(limited)
    reader = client_config(farm, tmp_path, user="reader", password=PASSWORD)
    refused = master(farm, "webhooks", config=reader)
    assert refused.returncode == 1 and "permission denied" in refused.stderr


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
    reader = JsonLines(proc)
    lines = reader.lines
    try:
        build_id = int(ok(master(farm, "package-add", "itest-all")).strip())
        wait_for(lambda: any(e["kind"] == "build.finished" and e["build_id"] == build_id
                             for e in lines), 120, "build.finished from `master events`")
    finally:
        stop_process(proc, signal.SIGTERM)
        reader.close()
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

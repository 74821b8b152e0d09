"""A master upgraded in place: the data_dir that commit 426347d wrote migrates, and its API says
the same about it; a data_dir newer than the code, and a worker speaking another protocol, are
refused with a clear message.

The fixture (tests/fixtures/datadir-426347d) was written by that commit's own code and holds
jobs in every state, two suites, a staged set and retained old versions; its README says how it
was made. Every later change to the schema adds a migration step and extends this test.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from werkzeug.security import generate_password_hash

from common.errors import ConfigError
from common.messages import PROTOCOL_VERSION
from master.store import SCHEMA_VERSION, Store
from master.store.db import Database
from tests.integration.farm import BIN, Master, RedisServer, free_port, running

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "datadir-426347d"
ANSWERS: dict[str, Any] = json.loads((FIXTURE / "api-answers.json").read_text())
#: Keys the API gained after 426347d; the old answers hold every other key unchanged.
NEW_KEYS = {"format", "total", "limit", "offset", "drained", "job_id", "build_id", "history",
            "finished", "success_rate", "last_24h"}
#: Keys one package's versions (GET /packages/<name>) gained, which other answers had before.
NEW_VERSION_KEYS = {"uploaded_by", "uploaded_at"}
#: The token the test gives the staged attempt (the fixture keeps only its hash, of a token
#: that was never written down), so that it can be reported as its worker would.
STAGED_TOKEN = "staged-attempt-token"


def copy_data_dir(dest: Path) -> Path:
    """The fixture's data_dir in ``dest``, with the staged files' recorded paths moved along
    (the old master stored absolute paths; an upgrade in place keeps them valid)."""
    data = dest / "data"
    shutil.copytree(FIXTURE / "data", data)
    with sqlite3.connect(data / "state.db") as db:
        db.execute("UPDATE staged SET path = replace(path, ?, ?)",
                   (ANSWERS["data_dir"], str(data)))
    return data


#: What the API added to values after 426347d: a job's log link names its format too (the
#: old link, without it, still answers in a farm that makes one format).
NEW_QUERY = "&format=deb"


def without_new_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_new_keys(v) if k != "log_url" else v.replace(NEW_QUERY, "")
                for k, v in value.items() if k not in NEW_KEYS}
    if isinstance(value, list):
        return [without_new_keys(v) for v in value]
    return value


def _layout(store: Store) -> dict[str, Any]:
    """Each table's columns and each index's columns, as SQLite reports them."""
    with store.db.read() as db:
        names = [(r[0], r[1]) for r in db.execute(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")]
        layout: dict[str, Any] = {}
        for kind, name in names:
            pragma = "table_info" if kind == "table" else "index_info"
            layout[f"{kind} {name}"] = sorted(r[2] if kind == "index" else r[1]
                                              for r in db.execute(f"PRAGMA {pragma}({name})"))
    return layout


def test_store_migrates_the_old_schema(tmp_path: Path) -> None:
    data = copy_data_dir(tmp_path)
    with sqlite3.connect(data / "state.db") as db:
        assert Database._version(db) == 1  # the old schema, which had no version
    store = Store.in_data_dir(data)
    assert store.db.schema_version() == SCHEMA_VERSION
    # The old file is kept beside the new one, as it was.
    backup = data / "state.db.schema-1.bak"
    with sqlite3.connect(backup) as old:
        assert old.execute("PRAGMA user_version").fetchone()[0] == 0
        assert old.execute("SELECT count(*) FROM jobs").fetchone()[0] == 19
    states: dict[str, int] = {}
    for _build, jobs in store.jobs.list_builds(limit=100):
        for job in jobs:
            states[job.state.value] = states.get(job.state.value, 0) + 1
            assert job.format == "deb"
            assert not job.local, job  # every job of the fixture was queued to the farm
    assert states == {"success": 12, "failed": 2, "dep-failed": 1, "cancelled": 1,
                      "queued": 1, "building": 2}
    staged = store.jobs.staged(19, 1)
    assert [(s.filename, s.kind, s.sha256) for s in staged] == [
        (ANSWERS["staged"]["filename"], "archive", ANSWERS["staged"]["sha256"])]
    assert Path(staged[0].path).is_file()
    records = store.packages.all()
    assert {r.suite for r in records} == {"stable", "testing"}
    assert all(r.format == "deb" and r.entry.startswith("Package: ") for r in records)
    # The migrated database has what a new one has: the same tables, columns and indexes.
    fresh = Store.in_data_dir(tmp_path / "fresh")
    assert _layout(store) == _layout(fresh)
    with store.db.read() as db:
        plan = " ".join(row[3] for row in db.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM packages WHERE format='deb' AND filename='x'"))
    assert "USING INDEX" in plan, plan
    # Opening it again changes nothing, and a newer store is refused.
    assert Store.in_data_dir(data).db.schema_version() == SCHEMA_VERSION
    with sqlite3.connect(data / "state.db") as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigError, match="newer pkgfarm") as refused:
        Store.in_data_dir(data)
    assert refused.value.details["key"] == "master.data_dir"


def _config(tmp_path: Path, data: Path, port: int, broker: str) -> Path:
    config = ANSWERS["config"]
    hashed = generate_password_hash(config["password"], method="pbkdf2:sha256:20000")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "broker_url": broker,
        "master": {"bind": f"127.0.0.1:{port}", "data_dir": str(data), "processes": 2,
                   "lease_seconds": config["lease_seconds"],
                   "users": {name: {"password_hash": hashed, "roles": roles}
                             for name, roles in config["users"].items()}},
        "repository": config["repository"],
        "worker": {"environment": "host", "work_dir": str(tmp_path / "work")},
    }))
    return path


def test_upgraded_master_answers_as_the_old_one(tmp_path: Path) -> None:
    data = copy_data_dir(tmp_path)
    with sqlite3.connect(data / "state.db") as db:
        changed = db.execute("UPDATE jobs SET token_hash=? WHERE id=? AND attempt=? AND "
                             "state='building'",
                             (hashlib.sha256(STAGED_TOKEN.encode()).hexdigest(),
                              ANSWERS["staged"]["job"], ANSWERS["staged"]["attempt"]))
        assert changed.rowcount == 1
    redis = RedisServer(tmp_path / "redis")
    port = free_port()
    master = Master(_config(tmp_path, data, port, redis.url), port, tmp_path / "master.log")
    auth = ("admin", ANSWERS["config"]["password"])
    with running(redis, master):
        assert "migrating" in (tmp_path / "master.log").read_text()
        compared = 0
        for path, old in sorted(ANSWERS["answers"].items()):
            resp = requests.get(master.url + path, auth=auth, timeout=30)
            assert resp.status_code == old["status"], path
            if "json" in old:
                expected = json.loads(json.dumps(old["json"]).replace(ANSWERS["base_url"],
                                                                      master.url))
                got = without_new_keys(resp.json())
                if path.startswith("/api/v1/packages/"):
                    got["versions"] = [{k: v for k, v in version.items()
                                        if k not in NEW_VERSION_KEYS}
                                       for version in got["versions"]]
                if path in ("/api/v1/builds?limit=1000", "/api/v1/builds/10"):
                    # An empty broker: the queued job is sent again as a new attempt, as the
                    # old master does too (the fixture's README says so).
                    _expect_resent(expected, got)
                assert got == expected, path
            else:
                assert resp.text == old["text"], path
            compared += 1
        assert compared == len(ANSWERS["answers"]) > 40

        # The worker protocol goes on. The staged set of job 19 (attempt 1 uploaded it before
        # the upgrade and never reported) is still that attempt's: its report publishes it.
        staged = ANSWERS["staged"]
        filename = staged["filename"]
        uploader = ("uploader", auth[1])
        report = requests.post(
            f"{master.url}/api/v1/jobs/{staged['job']}/report", auth=uploader, timeout=60,
            json={"attempt": staged["attempt"], "token": STAGED_TOKEN, "status": "success",
                  "files": [filename], "sha256": {filename: staged["sha256"]}})
        assert report.status_code == 200, report.text
        assert report.json() == {"id": staged["job"], "status": "success"}
        build = requests.get(f"{master.url}/api/v1/builds/13", auth=auth, timeout=30).json()
        assert build["status"] == "success"
        assert [(j["id"], j["status"], j["files"]) for j in build["jobs"]] == [
            (staged["job"], "success", [filename])]
        listed = requests.get(f"{master.url}/api/v1/packages", auth=auth,
                              timeout=30).json()["packages"]
        published = [p for p in listed if p["name"] == "fx-staged"]
        pool_path = "pool/main/f/fx-staged/" + filename
        assert [(p["suite"], p["version"], p["arch"], p["filename"], p["pool_path"],
                 p["sha256"], p["in_index"], p["uploaded_by"]) for p in published] == [
            ("stable", "1.0-1", "all", filename, pool_path, staged["sha256"], True,
             "uploader")]
        for arch in ("amd64", "arm64"):
            index = requests.get(f"{master.url}/repo/dists/stable/main/binary-{arch}/Packages",
                                 timeout=30)
            assert index.status_code == 200
            entry = next((e for e in index.text.split("\n\n")
                          if e.startswith("Package: fx-staged\n")), None)
            assert entry is not None, index.text
            assert f"Filename: {pool_path}\n" in entry
            assert f"SHA256: {staged['sha256']}" in entry
        archive = requests.get(f"{master.url}/repo/{pool_path}", timeout=30)
        assert hashlib.sha256(archive.content).hexdigest() == staged["sha256"]
        # The attempt is over: a second report is refused as stale.
        again = requests.post(
            f"{master.url}/api/v1/jobs/{staged['job']}/report", auth=uploader, timeout=30,
            json={"attempt": staged["attempt"], "token": STAGED_TOKEN, "status": "success",
                  "files": [filename], "sha256": {filename: staged["sha256"]}})
        assert again.status_code == 409, again.text

        # Claims go on for this protocol's workers, and a worker speaking another version of
        # it is refused with a clear error. Job 16 is the queued one, sent again as attempt 2.
        claim = requests.post(f"{master.url}/api/v1/jobs/16/claim", auth=("worker", auth[1]),
                              json={"attempt": 2, "worker": "old-worker"}, timeout=30)
        assert claim.status_code == 400, claim.text
        assert "version 1 of the master-worker protocol" in claim.json()["error"]
        claim = requests.post(f"{master.url}/api/v1/jobs/16/claim", auth=("worker", auth[1]),
                              json={"attempt": 2, "worker": "new-worker", "protocol": 99},
                              timeout=30)
        assert claim.status_code == 400 and "newer" in claim.json()["error"]
        claim = requests.post(f"{master.url}/api/v1/jobs/16/claim", auth=("worker", auth[1]),
                              json={"attempt": 2, "worker": "new-worker",
                                    "protocol": PROTOCOL_VERSION}, timeout=30)
        assert claim.status_code == 200, claim.text
        assert (claim.json()["package"], claim.json()["format"]) == ("fx-queued", "deb")


def _expect_resent(expected: dict[str, Any], got: dict[str, Any]) -> None:
    builds = expected.get("builds", [expected])
    for build in builds:
        for job in build["jobs"]:
            if job["status"] == "queued":
                job["attempt"] += 1


def test_master_refuses_a_newer_data_dir(tmp_path: Path) -> None:
    data = copy_data_dir(tmp_path)
    with sqlite3.connect(data / "state.db") as db:
        db.execute("PRAGMA user_version = 1000")
    config = _config(tmp_path, data, free_port(), "redis://127.0.0.1:1/0")
    result = subprocess.run([str(BIN / "master"), "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "written by a newer pkgfarm (schema version 1000" in result.stderr, result.stderr

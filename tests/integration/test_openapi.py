"""The OpenAPI description against a real master: complete, and true under schemathesis.

The master runs under gunicorn with its own redis-server and no workers. A little data is put
in first (a published archive, a finished local build with a log, a live worker), so that the
list and detail operations answer with content that the response schemas are checked against.
Then schemathesis fuzzes every operation as the admin user, with a fixed seed and a bounded
number of examples, and must find nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from common.config import settings_from_dict
from common.messages import PROTOCOL_VERSION
from master.app import MAX_JSON_BYTES, create_app
from tests.integration.farm import (
    BIN,
    PASSWORD,
    Master,
    make_deb,
    standalone_master,
)

API_PREFIX = "/api/v1"
#: Operations that need no credentials (everything else needs a role).
PUBLIC_OPERATIONS = {("/health", "get"), ("/openapi.json", "get")}
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}

#: Test cases per operation and phase, and the seed that makes the run repeatable.
MAX_EXAMPLES = 60
SEED = 20240601
#: The whole schemathesis run must end within this many seconds.
RUN_TIMEOUT = 100


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    """A master with its own redis-server and no workers, with some data in it."""
    root = tmp_path_factory.mktemp("openapi")
    # Long leases and worker TTL: nothing changes under the fuzzer while it runs.
    with standalone_master(root, extra_master={"max_upload_bytes": 500_000,
                                               "lease_seconds": 3600, "worker_ttl": 3600}) as m:
        seed_data(m, root / "debs")
        yield m


def put_archive(master: Master, deb: Path, user: str = "admin",
                job: dict[str, Any] | None = None) -> requests.Response:
    data = deb.read_bytes()
    params: dict[str, Any] = {"filename": deb.name, "sha256": hashlib.sha256(data).hexdigest()}
    headers = {"Content-Type": "application/vnd.debian.binary-package"}
    if job is not None:
        params.update(job=job["job_id"], attempt=job["attempt"])
        headers["X-Pkgfarm-Token"] = job["token"]
    return requests.put(master.url + API_PREFIX + "/upload", params=params, data=data,
                        headers=headers, auth=(user, PASSWORD), timeout=60)


def seed_data(master: Master, workdir: Path) -> None:
    """An archive published by hand, a finished local build with its log, a live worker."""
    workdir.mkdir()
    by_hand = put_archive(master, make_deb(workdir, "oa-manual", "1.0-1", arch="amd64"))
    assert by_hand.status_code == 201, by_hand.text

    resp = master.api("POST", "/api/v1/jobs", user="worker", json={
        "package": "oa-local", "version": "2.0-1", "arch": "all", "worker": "oa-box",
        "protocol": PROTOCOL_VERSION})
    assert resp.status_code == 201, resp.text
    job = resp.json()
    log = master.api("POST", f"/api/v1/jobs/{job['job_id']}/log", user="worker",
                     params={"attempt": job["attempt"]}, data=b"building oa-local\n",
                     headers={"X-Pkgfarm-Token": job["token"]})
    assert log.status_code == 200, log.text
    deb = make_deb(workdir, "oa-local", "2.0-1")
    staged = put_archive(master, deb, user="worker", job=job)
    assert staged.status_code == 201, staged.text
    report = master.api("POST", f"/api/v1/jobs/{job['job_id']}/report", user="worker", json={
        "attempt": job["attempt"], "token": job["token"], "status": "success",
        "files": [deb.name], "sha256": {deb.name: hashlib.sha256(deb.read_bytes()).hexdigest()}})
    assert report.status_code == 200, report.text

    beat = master.api("POST", "/api/v1/workers/heartbeat", user="worker", json={
        "name": "oa-box", "architectures": ["amd64"], "concurrency": 1,
        "queues": ["build.amd64", "build.all"]})
    assert beat.status_code == 200, beat.text


def openapi_path(rule: str) -> str:
    """A Flask rule under /api/v1 as an OpenAPI path: ``<int:build_id>`` -> ``{build_id}``."""
    assert rule.startswith(API_PREFIX + "/"), rule
    return re.sub(r"<(?:[^:<>]+:)?([^:<>]+)>", r"{\1}", rule[len(API_PREFIX):])


#: Routes outside /api/v1 that the document describes (each path item names its server "/").
ROOT_PATHS = {"/metrics"}


def app_operations(tmp_path: Path) -> set[tuple[str, str]]:
    """Every (OpenAPI path, method) the Flask app routes under /api/v1, and those of
    ROOT_PATHS."""
    settings = settings_from_dict({"master": {"data_dir": str(tmp_path / "data")}})
    app = create_app(settings)
    operations = set()
    for rule in app.url_map.iter_rules():
        if rule.rule in ROOT_PATHS:
            operations |= {(rule.rule, m.lower()) for m in rule.methods or ()
                           if m not in ("HEAD", "OPTIONS")}
            continue
        if not rule.rule.startswith(API_PREFIX + "/"):
            continue
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):  # Flask adds them: HEAD to GET, OPTIONS to all
                operations.add((openapi_path(rule.rule), method.lower()))
    return operations


def test_document_describes_every_route(master, tmp_path):
    resp = requests.get(master.url + "/api/v1/openapi.json", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    doc = json.loads(resp.text)
    assert doc["openapi"].startswith("3.0.")
    assert [s["url"] for s in doc["servers"]] == [API_PREFIX]
    assert doc["components"]["securitySchemes"]["basicAuth"] == {"type": "http",
                                                                 "scheme": "basic"}
    assert doc["security"] == [{"basicAuth": []}]

    documented = {(path, method) for path, item in doc["paths"].items()
                  for method in item if method in HTTP_METHODS}
    routed = app_operations(tmp_path)
    for path in ROOT_PATHS:
        assert doc["paths"][path]["servers"] == [{"url": "/"}], path
    assert routed - documented == set(), "routes missing from master/openapi.yaml"
    assert documented - routed == set(), "master/openapi.yaml describes routes that do not exist"

    for path, method in sorted(documented):
        operation = doc["paths"][path][method]
        public = (path, method) in PUBLIC_OPERATIONS
        assert (operation.get("security") == []) == public, (path, method)
        statuses = set(operation["responses"])
        assert any(s.startswith("2") for s in statuses), (path, method)
        if not public:
            assert {"401", "403", "429"} <= statuses, (path, method)
        declared = {p["name"] for p in operation.get("parameters", [])
                    + doc["paths"][path].get("parameters", []) if "$ref" not in p}
        declared |= {doc["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]["name"]
                     for p in operation.get("parameters", []) if "$ref" in p}
        assert set(re.findall(r"{(\w+)}", path)) <= declared, (path, method)


@pytest.mark.parametrize("path", ["/builds", "/jobs", "/jobs/1/claim", "/jobs/1/lease",
                                  "/jobs/1/report", "/workers/heartbeat"])
def test_json_body_over_one_mebibyte_is_refused(master, path):
    body = b'{"packages": ["' + b"a" * MAX_JSON_BYTES + b'"]}'
    resp = master.api("POST", API_PREFIX + path, data=body,
                      headers={"Content-Type": "application/json"})
    assert resp.status_code == 413, resp.text
    assert resp.json()["error"]


def test_log_follow_of_a_finished_job(master):
    builds = master.api("GET", "/api/v1/builds").json()["builds"]
    (local,) = [b for b in builds if b["packages"] == ["oa-local"]]
    assert local["status"] == "success"
    resp = requests.get(local["jobs"][0]["log_url"], params={"follow": "1"},
                        auth=("reader", PASSWORD), timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert resp.text == "building oa-local\n"


def test_schemathesis_finds_nothing(master, tmp_path):
    """Every operation, fuzzed as the admin: no 5xx, and every answer as documented."""
    checks = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
              "response_headers_conformance", "response_schema_conformance",
              "negative_data_rejection"]
    # Only the options below, whatever lies around. The log's `follow` streams until its job
    # ends, and jobs the fuzzer creates never end here: the fuzzer reads logs without it
    # (test_log_follow_of_a_finished_job checks it). The event stream goes on until its
    # `timeout`: the fuzzer reads what is there and ends (tests/integration/test_events.py
    # checks the live stream).
    # A list of builds filtered by values too long for the schema (2000 characters each,
    # percent-encoded) can make a request line longer than gunicorn reads: its 414 (which
    # the description documents) is a refusal too.
    config = tmp_path / "schemathesis.toml"
    config.write_text(textwrap.dedent("""\
        [[operations]]
        include-name = "GET /builds/{build_id}/packages/{name}/log"
        parameters = { "query.follow" = "false" }

        [[operations]]
        include-name = "GET /builds"
        checks.negative_data_rejection.expected-statuses = [
            "400", "401", "403", "404", "405", "406", "409", "414", "415", "422", "428", "429"]

        [[operations]]
        include-name = "GET /events"
        parameters = { "query.timeout" = 0 }
        """))
    args = [
        str(BIN / "schemathesis"), "--config-file", str(config), "--no-color",
        "run", f"{master.url}/api/v1/openapi.json",
        "--auth", f"admin:{PASSWORD}",
        "--checks", ",".join(checks),
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        # One worker: with more, schemathesis's threads race in CPython 3.11's ast.parse
        # (used by hypothesis to describe strategies) and the run errors now and then.
        "--workers", "1",
        "--generation-database", "none",
        "--generation-with-security-parameters", "false",
        "--request-timeout", "20",
        "--suppress-health-check", "all",
        "--warnings", "off",
    ]
    started = time.monotonic()
    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True,
                            timeout=RUN_TIMEOUT, check=False)
    took = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"schemathesis failed after {took:.0f} s:\n{output[-20000:]}"
    generated = re.search(r"(\d+) generated", output)
    assert generated and int(generated[1]) > 0, output[-3000:]


def test_hostile_requests_get_clear_4xx(master):
    """Inputs found while fuzzing by hand: each gets a 4xx with a JSON error, never a 500."""
    auth = ("admin", PASSWORD)
    nested = requests.post(f"{master.url}/api/v1/workers/heartbeat", auth=auth, timeout=30,
                           data="[" * 100_000, headers={"Content-Type": "application/json"})
    assert nested.status_code == 400
    assert nested.json()["error"]
    huge = requests.get(f"{master.url}/api/v1/builds/9223372036854775808", auth=auth,
                        timeout=10)
    assert huge.status_code == 404
    wrong_method = requests.delete(f"{master.url}/api/v1/builds", auth=auth, timeout=10)
    assert wrong_method.status_code == 405
    assert set(wrong_method.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    bad_flag = requests.get(f"{master.url}/api/v1/builds/1/packages/x/log?follow=maybe",
                            auth=auth, timeout=10)
    assert bad_flag.status_code in (400, 404)

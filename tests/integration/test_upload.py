"""The upload endpoint against a real master: who may upload, what is refused, concurrency."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import requests

from common.messages import PROTOCOL_VERSION
from tests.integration.farm import (
    PASSWORD,
    AptClient,
    Master,
    make_deb,
    parse_packages,
    repo_files,
    standalone_master,
)


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    """A master with its own redis-server and no workers: uploads only."""
    with standalone_master(tmp_path_factory.mktemp("upload"),
                           extra_master={"max_upload_bytes": 200_000}) as m:
        yield m


def upload(master: Master, deb: Path, user: str | None = "admin", sha256: str | None = None,
           filename: str | None = None, body: bytes | None = None,
           job: dict[str, Any] | None = None, token: str | None = None) -> requests.Response:
    """PUT an archive; with ``job`` (an assignment) as that attempt, else by hand (admin)."""
    data = deb.read_bytes() if body is None else body
    params: dict[str, Any] = {"filename": filename or deb.name,
                              "sha256": sha256 or hashlib.sha256(data).hexdigest()}
    headers = {}
    if job is not None:
        params.update(job=job["job_id"], attempt=job["attempt"])
        headers["X-Pkgfarm-Token"] = token if token is not None else job["token"]
    auth = (user, PASSWORD) if user else None
    return requests.put(master.url + "/api/v1/upload", params=params, data=data, auth=auth,
                        headers=headers, timeout=60)


def local_job(master: Master, package: str, version: str, arch: str = "all",
              user: str = "worker", fmt: str = "deb") -> dict[str, Any]:
    """A running attempt, recorded and given to ``user`` as `worker package-add --now`
    does: its assignment (job id, attempt, token)."""
    resp = master.api("POST", "/api/v1/jobs", user=user, json={
        "package": package, "version": version, "arch": arch, "worker": f"{user}-box",
        "format": fmt, "protocol": PROTOCOL_VERSION})
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_upload_publishes_and_is_idempotent(master, tmp_path):
    deb = make_deb(tmp_path, "up-ok", "1.0-1")
    resp = upload(master, deb)
    assert resp.status_code == 201, resp.text
    assert resp.json()["pool_path"] == "pool/main/u/up-ok/up-ok_1.0-1_all.deb"
    assert "Filename: pool/main/u/up-ok/up-ok_1.0-1_all.deb" in master.index("amd64")
    again = upload(master, deb)
    assert again.status_code == 200
    assert again.json()["already_present"] is True
    # The same name with other content is refused: published files never change.
    other = make_deb(tmp_path / "other", "up-ok", "1.0-1", payload=b"changed\n")
    assert upload(master, other).status_code == 409
    assert (master.data_dir / "repo/pool/main/u/up-ok/up-ok_1.0-1_all.deb").read_bytes() == \
        deb.read_bytes()


def test_newer_version_replaces_older_in_index(master, tmp_path):
    for version in ("1.0-1", "1.0-2", "1.0~rc1-1"):
        assert upload(master, make_deb(tmp_path / version, "up-ver", version)).status_code == 201
    entries = [s for s in parse_packages(master.index("amd64")) if s["Package"] == "up-ver"]
    assert [e["Version"] for e in entries] == ["1.0-2"]


@pytest.mark.parametrize("case", ["no-auth", "read-only", "worker-without-job",
                                  "wrong-sha256", "not-a-deb",
                                  "truncated", "name-lies", "path-trick", "too-large",
                                  "wrong-arch"])
def test_rejected_upload_changes_nothing(master, tmp_path, case):
    deb = make_deb(tmp_path, "up-rejected", "1.0-1")
    before = repo_files(master.data_dir)
    if case == "no-auth":
        resp, status = upload(master, deb, user=None), 401
    elif case == "read-only":
        resp, status = upload(master, deb, user="reader"), 403
    elif case == "worker-without-job":
        resp, status = upload(master, deb, user="worker"), 403
    elif case == "wrong-sha256":
        resp, status = upload(master, deb, sha256="0" * 64), 422
    elif case == "not-a-deb":
        resp, status = upload(master, deb, body=b"this is not a debian archive\n" * 10), 422
    elif case == "truncated":
        resp, status = upload(master, deb, body=deb.read_bytes()[:-200]), 422
    elif case == "name-lies":
        resp, status = upload(master, deb, filename="other-name_1.0-1_all.deb"), 422
    elif case == "path-trick":
        resp, status = upload(master, deb, filename="../../up-rejected_1.0-1_all.deb"), 400
    elif case == "too-large":
        big = make_deb(tmp_path / "big", "up-big", "1.0-1", payload=os.urandom(300_000))
        resp, status = upload(master, big), 413
    else:
        amd = make_deb(tmp_path / "s390", "up-s390", "1.0-1", arch="s390x")
        resp, status = upload(master, amd), 422
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]
    assert repo_files(master.data_dir) == before
    assert not list((master.data_dir / "incoming").iterdir())


def test_twenty_concurrent_uploads(master, tmp_path):
    debs = [make_deb(tmp_path, f"up-many-{i:02d}", "1.0-1", arch="amd64" if i % 2 else "all")
            for i in range(20)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(lambda d: upload(master, d).status_code, debs))
    assert statuses == [201] * 20
    listed = {s["Package"] for s in parse_packages(master.index("amd64"))}
    assert {f"up-many-{i:02d}" for i in range(20)} <= listed
    apt = AptClient(tmp_path / "apt", f"deb [trusted=yes] {master.url}/repo stable main")
    apt.update()
    for i in (0, 7, 19):
        deb = apt.download(f"up-many-{i:02d}")
        assert deb.read_bytes() == debs[i].read_bytes()


def test_upload_authority_of_attempts(master, tmp_path):
    """Only the holder of a running attempt publishes that attempt's archive."""
    job = local_job(master, "up-auth", "1.0-1")
    other = local_job(master, "up-other", "1.0-1")
    deb = make_deb(tmp_path, "up-auth", "1.0-1")
    before = repo_files(master.data_dir)
    refusals = [
        (upload(master, deb, user="worker", job=job, token="not-the-token"), 403),
        # another user with upload rights, holding the right token, is still not the claimer
        (upload(master, deb, user="worker2", job=job), 403),
        # the token of one job does not open another
        (upload(master, deb, user="worker", job=other, token=job["token"]), 403),
        # an attempt that was never given out
        (upload(master, deb, user="worker", job={**job, "attempt": job["attempt"] + 1}), 409),
        (upload(master, deb, user="worker", job={**job, "job_id": 999999}), 403),
        # the archive of another package under this job
        (upload(master, make_deb(tmp_path / "x", "up-other", "1.0-1"), user="worker",
                job=job), 422),
    ]
    for resp, status in refusals:
        assert resp.status_code == status, resp.text
        assert resp.json()["error"]
    assert repo_files(master.data_dir) == before

    assert upload(master, deb, user="worker", job=job).status_code == 201
    report = master.api("POST", f"/api/v1/jobs/{job['job_id']}/report", user="worker", json={
        "attempt": job["attempt"], "token": job["token"], "status": "success",
        "files": [deb.name], "sha256": {deb.name: hashlib.sha256(deb.read_bytes()).hexdigest()}})
    assert report.status_code == 200, report.text
    # The attempt is finished: nothing more may be published or reported with it.
    newer = make_deb(tmp_path / "newer", "up-auth", "1.0-2")
    late = upload(master, newer, user="worker", filename=newer.name, job=job)
    assert late.status_code == 409
    again = master.api("POST", f"/api/v1/jobs/{job['job_id']}/report", user="worker", json={
        "attempt": job["attempt"], "token": job["token"], "status": "failed"})
    assert again.status_code == 409
    build = master.api("GET", f"/api/v1/builds/{job['build_id']}").json()
    assert build["status"] == "success"
    assert [j["files"] for j in build["jobs"]] == [[deb.name]]


def report(master: Master, job: dict[str, Any], debs: list[Path],
           sha256: dict[str, str] | None = None) -> requests.Response:
    sums = {d.name: hashlib.sha256(d.read_bytes()).hexdigest() for d in debs}
    return master.api("POST", f"/api/v1/jobs/{job['job_id']}/report", user="worker", json={
        "attempt": job["attempt"], "token": job["token"], "status": "success",
        "files": [d.name for d in debs], "sha256": {**sums, **(sha256 or {})}})


def test_a_set_of_archives_is_published_whole_or_not_at_all(master, tmp_path):
    debs = [make_deb(tmp_path, name, "2.0-1", source="up-set")
            for name in ("up-set", "up-set-doc", "up-set-data")]
    before = repo_files(master.data_dir)

    # One file's checksum in the manifest is wrong: nothing of the set is published.
    job = local_job(master, "up-set", "2.0-1")
    for deb in debs:
        assert upload(master, deb, user="worker", job=job).status_code == 201
    assert repo_files(master.data_dir) == before  # staged, not published
    refused = report(master, job, debs, {debs[1].name: "0" * 64})
    assert refused.status_code == 422
    assert repo_files(master.data_dir) == before
    build = master.api("GET", f"/api/v1/builds/{job['build_id']}").json()
    assert build["jobs"][0]["status"] == "failed"
    assert "publication refused" in build["jobs"][0]["error"]

    # A file named in the manifest was never uploaded: refused too.
    job = local_job(master, "up-set", "2.0-1")
    for deb in debs[:2]:
        assert upload(master, deb, user="worker", job=job).status_code == 201
    assert report(master, job, debs).status_code == 422
    assert repo_files(master.data_dir) == before

    # The whole set, right: all three appear in one index generation.
    job = local_job(master, "up-set", "2.0-1")
    for deb in debs:
        assert upload(master, deb, user="worker", job=job).status_code == 201
    assert report(master, job, debs).status_code == 200
    listed = {s["Package"] for s in parse_packages(master.index("amd64"))}
    assert {"up-set", "up-set-doc", "up-set-data"} <= listed
    assert not list((master.data_dir / "incoming").rglob("*.deb"))


def end_attempt(master: Master, job: dict[str, Any]) -> None:
    """Report a local attempt failed (what it staged is dropped, nothing is published)."""
    resp = master.api("POST", f"/api/v1/jobs/{job['job_id']}/report", user="worker", json={
        "attempt": job["attempt"], "token": job["token"], "status": "failed",
        "error": "ended by the test"})
    assert resp.status_code == 200, resp.text


def check_archives_against_jobs(master: Master, fmt: str, archive: Path,
                                matching: tuple[str, str, str],
                                others: dict[str, tuple[str, str, str]]) -> None:
    """``archive`` uploaded under a running ``fmt`` job of each of ``others`` (what: (package,
    version, arch), each differing from the archive in one way) is refused with 422 and a
    message naming the job and the archive, and the repository stays as it was; under a job of
    ``matching`` it is taken (staged; the attempt then ends failed, publishing nothing)."""
    before = repo_files(master.data_dir)
    for what, (package, version, arch) in others.items():
        job = local_job(master, package, version, arch, fmt=fmt)
        resp = upload(master, archive, user="worker", job=job)
        assert resp.status_code == 422, (what, resp.status_code, resp.text)
        error = resp.json()["error"]
        assert error.startswith(f"this build makes packages of {package} {version} for "
                                f"{arch}, not "), (what, error)
        assert resp.json()["field"] == "filename"
        assert repo_files(master.data_dir) == before, what
        assert not list((master.data_dir / "incoming" / "staged").glob(f"{job['job_id']}.*/*"))
        end_attempt(master, job)
    job = local_job(master, *matching, fmt=fmt)
    assert upload(master, archive, user="worker", job=job).status_code == 201
    end_attempt(master, job)
    assert repo_files(master.data_dir) == before

"""The whole farm: definitions in, packages that a stock apt-get downloads out."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.integration.farm import AptClient, parse_packages, sha256_file, wait_for


def _contents(deb: Path, member: str) -> str:
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                         check=True).stdout
    out = subprocess.run(["tar", "-xO", f"./{member}"], input=tar, capture_output=True,
                         check=True)
    return out.stdout.decode()


def test_build_set_reaches_apt(farm, tmp_path):
    check_build_set(farm.master, tmp_path)


def check_build_set(master, tmp_path) -> None:
    """A set of all, amd64-only and arm64-only definitions, built on the workers their
    architecture tags allow, and read back with a stock apt-get."""
    build_id = master.submit(["itest-all", "itest-amd64", "itest-arm64"])
    build = master.wait_build(build_id)

    jobs = {(j["package"], j["arch"]): j for j in build["jobs"]}
    assert set(jobs) == {("itest-all", "all"), ("itest-amd64", "amd64"),
                         ("itest-arm64", "arm64")}
    assert build["status"] == "success", build
    assert all(j["status"] == "success" for j in jobs.values()), build
    # Architecture tags route the work: arm64 only on the arm64 worker, amd64 only on amd64.
    assert jobs[("itest-arm64", "arm64")]["worker"] == "w-arm64"
    assert jobs[("itest-amd64", "amd64")]["worker"] == "w-amd64"

    apt = AptClient(tmp_path / "apt", f"deb [trusted=yes] {master.url}/repo stable main")
    apt.update()
    index = {(s["Package"], s["Architecture"]): s
             for arch in ("amd64", "arm64") for s in parse_packages(master.index(arch))}
    for spec, key in (("itest-all", ("itest-all", "all")),
                      ("itest-amd64:amd64", ("itest-amd64", "amd64")),
                      ("itest-arm64:arm64", ("itest-arm64", "arm64"))):
        deb = apt.download(spec)
        assert sha256_file(deb) == index[key]["SHA256"]
        assert str(deb.stat().st_size) == index[key]["Size"]
        if key[0] == "itest-arm64":
            assert _contents(deb, "usr/share/itest-arm64/marker") == "built for arm64\n"

    # The amd64 index lists the all package and the amd64 one, never the arm64 one.
    amd64_names = {s["Package"] for s in parse_packages(master.index("amd64"))}
    assert {"itest-all", "itest-amd64"} <= amd64_names
    assert "itest-arm64" not in amd64_names

    log = master.api("GET", f"/api/v1/builds/{build_id}/packages/itest-arm64/log")
    assert log.status_code == 200
    assert "building itest-arm64 1.0-1 for arm64" in log.text


def test_failed_build_is_reported_with_its_log(farm):
    master = farm.master
    build = master.wait_build(master.submit(["itest-fail"]))
    (job,) = build["jobs"]
    assert job["status"] == "failed"
    assert "exit status 3" in job["error"]
    log = master.api("GET", f"/api/v1/builds/{build['id']}/packages/itest-fail/log")
    assert "about to fail on purpose" in log.text
    assert "itest-fail" not in master.index("amd64")


def test_workers_list_shows_both_workers(farm):
    workers = wait_for(
        lambda: {w["name"]: w for w in
                 farm.master.api("GET", "/api/v1/workers").json()["workers"]} or None,
        10, "workers")
    assert workers["w-amd64"]["architectures"] == ["amd64"]
    assert workers["w-arm64"]["architectures"] == ["arm64"]
    assert workers["w-arm64"]["queues"] == ["build.arm64", "build.all"]
    assert workers["w-amd64"]["concurrency"] == 1


def test_bad_build_requests_queue_nothing(farm):
    master = farm.master
    before = len(master.api("GET", "/api/v1/builds").json()["builds"])
    cases = [
        ({"packages": ["no-such-package"]}, 404),
        ({"packages": []}, 400),
        ({"packages": ["itest-all"], "colour": "red"}, 400),
        ({"packages": ["itest-amd64"], "arch": "arm64"}, 422),
        ({"packages": ["itest-all"], "arch": "sparc"}, 400),
        ({"packages": ["itest-all", "no-such-package"]}, 404),
    ]
    for body, status in cases:
        resp = master.api("POST", "/api/v1/builds", json=body)
        assert resp.status_code == status, (body, resp.text)
        assert resp.json()["error"]
    resp = master.api("POST", "/api/v1/builds", data="{not json",
                      headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert len(master.api("GET", "/api/v1/builds").json()["builds"]) == before
    assert master.api("POST", "/api/v1/builds", user="reader",
                      json={"packages": ["itest-all"]}).status_code == 403
    assert master.api("POST", "/api/v1/builds", user=None,
                      json={"packages": ["itest-all"]}).status_code == 401


def test_build_depends_checked_before_the_script(farm):
    master = farm.master
    ok = master.wait_build(master.submit(["itest-bdep"]))
    assert ok["status"] == "success", ok
    missing = master.wait_build(master.submit(["itest-bdep-missing"]))
    (job,) = missing["jobs"]
    assert job["status"] == "failed"
    assert "pkgfarm-no-such-package-exists" in job["error"]
    log = master.api("GET", f"/api/v1/builds/{missing['id']}/packages/itest-bdep-missing/log")
    assert "this script must not run" not in log.text.replace('echo "this script', "")


def test_build_script_cannot_write_outside_its_folder(farm):
    build = farm.master.wait_build(farm.master.submit(["itest-escape"]))
    (job,) = build["jobs"]
    assert job["status"] == "failed"
    assert "may write only inside its own folder" in job["error"]
    log = farm.master.api("GET", f"/api/v1/builds/{build['id']}/packages/itest-escape/log")
    assert "Read-only file system" in log.text
    assert not Path("/etc/pkgfarm-itest-escape").exists()
    assert not list(Path(farm.root).rglob("pkgfarm-itest-escape"))
    assert "itest-escape" not in farm.master.index("amd64")

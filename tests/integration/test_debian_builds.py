"""Real Debian builds through the whole farm, in clean environments: a Debian source package
from the archive, a source with arch-specific and arch-independent parts, and build sets that
build in dependency order against the farm's own repository."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Farm
from tests.integration.farm import BIN, TEST_PACKAGES, AptClient, parse_packages, sha256_file
from tests.unit.native_source import make_dsc

BASES = Path(os.environ.get("PKGFARM_TEST_BASES", "/var/cache/pkgfarm-tests/bases"))

CHAIN = {
    # name: (build_depends, build script)
    "itest-chain-a": ([], 'echo "a-content" > "$DESTDIR/usr/share/itest-chain-a/data"'),
    "itest-chain-b": (["itest-chain-a"],
                      'cp /usr/share/itest-chain-a/data "$DESTDIR/usr/share/itest-chain-b/data"'),
    "itest-chain-c": (["itest-chain-b"],
                      'cp /usr/share/itest-chain-b/data "$DESTDIR/usr/share/itest-chain-c/data"'),
}


def write_chain(folder: Path, broken: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (depends, script) in CHAIN.items():
        body = "exit 7" if name == broken else script
        (folder / f"{name}.yaml").write_text(
            "package:\n"
            f"  name: {name}\n  version: '1.0'\n  release: '1'\n  architecture: all\n"
            f"  description: |\n    chain link {name}\n"
            "  maintainer: pkgfarm tests <tests@example.org>\n"
            f"build_depends: {depends}\n"
            "build: |\n"
            f'  mkdir -p "$DESTDIR/usr/share/{name}"\n'
            f"  {body}\n")


@pytest.fixture(scope="module")
def farm(tmp_path_factory) -> Iterator[Farm]:
    """A farm whose worker builds in clean environments, with the machine's deb-src sources;
    the repository serves this machine's architecture only (a clean root of another needs
    qemu-user-static, which this machine does not have)."""
    root = tmp_path_factory.mktemp("debian")
    BASES.mkdir(parents=True, exist_ok=True)
    chain = root / "chain"
    write_chain(chain)
    f = Farm(root, extra_worker={"environment": "clean", "base_dir": str(BASES)},
             extra={"debian_sources": [], "package_paths": [str(TEST_PACKAGES), str(chain)],
                    "repository": {"suite": "stable", "component": "main",
                                   "architectures": ["amd64"]}})
    f.chain = chain
    try:
        f.start({"w-clean": ["amd64"]})
        yield f
    finally:
        f.stop()


def index_entries(farm: Farm) -> dict[str, dict[str, str]]:
    return {s["Package"]: s for s in parse_packages(farm.master.index("amd64"))}


def test_debian_source_hello_built_published_and_downloaded(farm, tmp_path):
    result = subprocess.run([str(BIN / "worker"), "package-add", "hello", "--now", "--config",
                             str(farm.config)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hello_" in result.stdout and "_amd64.deb is in" in result.stdout
    entry = index_entries(farm)["hello"]
    apt = AptClient(tmp_path / "apt", f"deb [trusted=yes] {farm.master.url}/repo stable main")
    apt.update()
    deb = apt.download("hello:amd64")
    assert sha256_file(deb) == entry["SHA256"]
    # The .buildinfo is kept with the build.
    assert list((farm.data_dir / "artifacts").rglob("hello_*.buildinfo"))
    # The machine was left as it was: hello was not installed here by the build.
    status = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", "hello"],
                            capture_output=True, text=True)
    assert status.stdout != "installed"


def test_source_with_arch_and_indep_parts_builds_each_once(farm, tmp_path):
    dsc = make_dsc(tmp_path / "tiny")
    build = farm.master.wait_build(farm.master.submit([str(dsc)]), timeout=600)
    assert build["status"] == "success", build
    jobs = {j["arch"]: j for j in build["jobs"]}
    assert set(jobs) == {"amd64", "all"}
    assert [f for f in jobs["amd64"]["files"] if f.endswith(".deb")] == [
        "pkgfarm-tiny_1.0_amd64.deb"]
    assert [f for f in jobs["all"]["files"] if f.endswith(".deb")] == [
        "pkgfarm-tiny-data_1.0_all.deb"]
    entries = index_entries(farm)
    assert entries["pkgfarm-tiny"]["Architecture"] == "amd64"
    assert entries["pkgfarm-tiny-data"]["Architecture"] == "all"


def test_build_set_in_dependency_order_uses_the_farms_repository(farm):
    master = farm.master
    build = master.wait_build(master.submit(["itest-chain-c", "itest-chain-b",
                                             "itest-chain-a"]), timeout=600)
    assert build["status"] == "success", build
    jobs = {j["package"]: j for j in build["jobs"]}
    order = sorted(jobs, key=lambda name: jobs[name]["started_at"])
    assert order == ["itest-chain-a", "itest-chain-b", "itest-chain-c"]
    assert jobs["itest-chain-a"]["finished_at"] <= jobs["itest-chain-b"]["started_at"]
    log = master.api("GET", f"/api/v1/builds/{build['id']}/packages/itest-chain-b/log").text
    # B's build installed A, fetched from the farm's own repository.
    assert f"Get:1 {master.url}/repo stable/main amd64 itest-chain-a all 1.0-1" in log
    # ...and what A installed travelled through B into C.
    pool = farm.data_dir / "repo" / "pool" / "main" / "i" / "itest-chain-c"
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(pool / "itest-chain-c_1.0-1_all.deb")],
                         capture_output=True, check=True).stdout
    data = subprocess.run(["tar", "-xO", "./usr/share/itest-chain-c/data"], input=tar,
                          capture_output=True, check=True).stdout
    assert data == b"a-content\n"


def test_failure_propagates_then_restart_after_the_fix(farm):
    master = farm.master
    write_chain(farm.chain, broken="itest-chain-a")
    for name in CHAIN:  # a new version of each, so that the set is built again
        path = farm.chain / f"{name}.yaml"
        path.write_text(path.read_text().replace("release: '1'", "release: '2'"))
    build = master.wait_build(master.submit(["itest-chain-a", "itest-chain-b",
                                             "itest-chain-c"]), timeout=600)
    jobs = {j["package"]: j for j in build["jobs"]}
    assert jobs["itest-chain-a"]["status"] == "failed"
    for name in ("itest-chain-b", "itest-chain-c"):
        assert jobs[name]["status"] == "dep-failed"
        assert "itest-chain-a" in jobs[name]["error"]
    # Fix A, restart the failed part of the same build.
    write_chain(farm.chain)
    for name in CHAIN:
        path = farm.chain / f"{name}.yaml"
        path.write_text(path.read_text().replace("release: '1'", "release: '2'"))
    resp = master.api("POST", f"/api/v1/builds/{build['id']}/restart", user="builder")
    assert resp.status_code == 200, resp.text
    build = master.wait_build(build["id"], timeout=600)
    assert build["status"] == "success", build
    assert {j["package"]: j["version"] for j in build["jobs"]} == {
        name: "1.0-2" for name in CHAIN}
    assert index_entries(farm)["itest-chain-c"]["Version"] == "1.0-2"

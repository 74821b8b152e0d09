"""Clean build environments and Debian sources, for real: mmdebstrap, bubblewrap, apt-get,
dpkg-buildpackage. Only pkgfarm's functions are used here; no master or worker process runs.

The base tarball is made once and kept under /var/cache/pkgfarm-tests/bases (or
$PKGFARM_TEST_BASES), so later runs, CI's included, reuse it until it is a week old.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import yaml

from common.arch import host_arch
from common.config import Settings, WorkerSettings
from common.definition import parse_definition
from common.errors import BuildFailed
from common.formats.deb.policy import strip_epoch
from common.formats.deb.resolve import resolve, resolve_with_files
from common.formats.deb.source import snapshot_debian_source, unpack_debian_source
from tests.unit import native_source
from worker.build import build_definition
from worker.environment import ROOT_NAME, CleanEnvironment
from worker.environment.bases import base_info, create_base
from worker.formats.deb.source import build_source, fetch

BASES = Path(os.environ.get("PKGFARM_TEST_BASES", "/var/cache/pkgfarm-tests/bases"))
ARCH = host_arch()
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="clean environments need root")

#: what each test took, printed at the end of the module (pytest -s shows it)
TIMES: dict[str, float] = {}


def dpkg_state() -> str:
    """Every package this machine's dpkg knows, with version and status."""
    return subprocess.run(
        ["dpkg-query", "-W", "-f=${Package}:${Architecture} ${Version} ${db:Status-Abbrev}\n"],
        capture_output=True, text=True, check=True).stdout


def installed_on_host(name: str) -> bool:
    result = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", name],
                            capture_output=True, text=True)
    return result.returncode == 0 and result.stdout.strip() == "installed"


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb), name], capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerSettings]:
    missing = [t for t in ("mmdebstrap", "bwrap", "zstd", "dpkg-source", "git")
               if shutil.which(t) is None]
    if missing:
        pytest.fail(f"clean environment tests need {', '.join(missing)} (run ./dev.sh setup)")
    ws = WorkerSettings(work_dir=str(tmp_path_factory.mktemp("work")), base_dir=str(BASES))
    BASES.mkdir(parents=True, exist_ok=True)
    log = BASES / f"{ws.base_suite}-{ARCH}.test.log"
    stages: list[str] = []
    made_after = time.time()
    with open(log, "a") as out:
        start = time.monotonic()
        create_base(ws, ARCH, out, log=stages.append)
        TIMES["base (made or reused)"] = time.monotonic() - start
    if (base_info(ws, ARCH) or {}).get("created", 0) >= made_after:
        # Made now: whoever waited saw mmdebstrap's stages as they came, and the outcome.
        assert any(s.startswith("base: downloading packages") for s in stages), stages
        assert stages[-1].startswith(f"made the {ws.base_suite} {ARCH} base in "), stages
    yield ws
    info = base_info(ws, ARCH) or {}
    sys.stdout.write("\nclean environment timings: " + json.dumps(
        {**{k: round(v, 1) for k, v in TIMES.items()},
         "base made in (s)": info.get("seconds"), "base bytes": info.get("bytes")}) + "\n")


@pytest.fixture(scope="module")
def apt_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One apt state for the master's look-ups and the worker's downloads."""
    return tmp_path_factory.mktemp("apt")


@pytest.fixture
def job(tmp_path: Path) -> Path:
    folder = tmp_path / "job"
    folder.mkdir()
    return folder


@pytest.fixture
def out(tmp_path: Path) -> Iterator[IO[str]]:
    with open(tmp_path / "build.log", "w") as log:
        yield log


# -- (a) a real Debian source ------------------------------------------------------------------


def test_hello_builds_in_a_clean_environment(settings: WorkerSettings, apt_state: Path,
                                             job: Path, out: IO[str]) -> None:
    before = dpkg_state()
    src = resolve("hello", Settings(), apt_state)
    assert src.origin == "apt"
    assert src.build_arches([ARCH]) == [ARCH]
    assert src.produces(ARCH) == ["hello"]

    start = time.monotonic()
    tree = fetch(src, job / "area" / "src", out, state_dir=apt_state)  # the build's area
    TIMES["hello fetch"] = time.monotonic() - start
    start = time.monotonic()
    with CleanEnvironment(settings, ARCH, job, out=out) as env:
        assert env.root.is_dir()
        result = build_source(tree, ARCH, env, out, timeout=900)
    TIMES["hello build in a clean root"] = time.monotonic() - start

    assert [a.name for a in result.archives] == [f"hello_{strip_epoch(src.version)}_{ARCH}.deb"]
    assert field(result.archives[0], "Package") == "hello"
    assert field(result.archives[0], "Architecture") == ARCH
    # The .buildinfo is the one by-product kept with the build (the .changes is not).
    assert [p.suffix for p in result.by_products] == [".buildinfo"]
    assert all(p.is_file() for p in result.by_products)
    assert not (job / ROOT_NAME).exists()
    # Its build dependencies (debhelper, texinfo, …) went into the root, not onto the machine.
    assert dpkg_state() == before


# -- (b) the two halves of a source ------------------------------------------------------------


def test_arch_and_indep_jobs_of_a_native_source(settings: WorkerSettings, tmp_path: Path,
                                                out: IO[str]) -> None:
    dsc = native_source.make_dsc(tmp_path / "upload")
    src, files = resolve_with_files(str(dsc), Settings(), tmp_path / "state")
    assert src.build_arches([ARCH]) == [ARCH, "all"]
    snapshot = snapshot_debian_source(src, files)

    made: dict[str, list[str]] = {}
    start = time.monotonic()
    for job_arch in src.build_arches([ARCH]):
        job = tmp_path / f"job-{job_arch}"
        back, local = unpack_debian_source(snapshot, job / "snapshot")
        tree = fetch(back, job / "area" / "src", out, local)
        with CleanEnvironment(settings, job_arch, job, out=out) as env:
            result = build_source(tree, job_arch, env, out, timeout=300)
        made[job_arch] = [a.name for a in result.archives]
        for archive in result.archives:
            assert field(archive, "Package") in src.produces(job_arch)
        assert [p.suffix for p in result.by_products] == [".buildinfo"]
    TIMES["native source -B and -A"] = time.monotonic() - start

    assert made == {ARCH: [f"pkgfarm-tiny_1.0_{ARCH}.deb"],
                    "all": ["pkgfarm-tiny-data_1.0_all.deb"]}


# -- (c) a YAML definition's build dependencies stay in the root -------------------------------


def test_yaml_build_depends_are_installed_only_in_the_root(settings: WorkerSettings, job: Path,
                                                          out: IO[str]) -> None:
    candidates = [name for name in ("cowsay", "sl", "hello") if not installed_on_host(name)]
    if not candidates:
        pytest.skip("cowsay, sl and hello are all installed on this machine")
    dep = candidates[0]
    workdir = job / "def"
    (workdir / "sources").mkdir(parents=True)
    (workdir / "package.yaml").write_text(yaml.safe_dump({
        "package": {"name": "itest-clean", "version": "1.0", "architecture": "all",
                    "description": "Clean environment test", "maintainer": "T <t@example.org>"},
        "build_depends": [dep],
        "build": (f"dpkg-query -W -f='${{Package}} ${{db:Status-Status}}\\n' {dep} > dep.txt\n"
                  'install -D -m 0644 dep.txt "$DESTDIR/usr/share/itest-clean/dep.txt"\n'),
    }))
    definition = parse_definition(workdir / "package.yaml", check_sources=False)
    messages: list[str] = []
    start = time.monotonic()
    result = build_definition(definition, "all", workdir, out, messages.append, timeout=300,
                              environment=CleanEnvironment(settings, "all", job, out=out))
    TIMES["YAML build with a build dependency"] = time.monotonic() - start
    extracted = job / "x"
    subprocess.run(["dpkg-deb", "-x", str(result.archives[0]), str(extracted)], check=True)
    assert (extracted / "usr/share/itest-clean/dep.txt").read_text() == f"{dep} installed\n"
    assert not installed_on_host(dep)
    assert not (job / ROOT_NAME).exists()


# -- (d) a time limit stops everything ---------------------------------------------------------


def processes_with(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline and "pytest" not in cmdline:
            found.append(int(proc.name))
    return found


def test_timeout_in_a_clean_root_kills_everything(settings: WorkerSettings, job: Path,
                                                  out: IO[str]) -> None:
    script = ("sleep 987651 & setsid sleep 987652 & nohup sleep 987653 >/dev/null 2>&1 & "
              "sleep 987654")
    start = time.monotonic()
    with CleanEnvironment(settings, ARCH, job, out=out) as env:
        with pytest.raises(BuildFailed, match="longer than its limit of 2 s"):
            env.run(["sh", "-c", script], env.area, ENV, 2, out)
        assert time.monotonic() - start < 30
        deadline = time.monotonic() + 5
        while processes_with("sleep 98765") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_with("sleep 98765") == []
    assert not (job / ROOT_NAME).exists()


def test_unpacked_root_where_overlays_are_not_wanted(settings: WorkerSettings, job: Path,
                                                     out: IO[str]) -> None:
    """The fallback for machines without overlay mounts: the base unpacked per build."""
    with CleanEnvironment(settings, ARCH, job, out=out, overlay=False) as env:
        assert env.lower is None
        assert (job / ROOT_NAME / "tree" / "etc" / "apt").is_dir()
        # The root's own commands (apt, as root) write into the per-build tree ...
        env._run_root(["sh", "-c", "touch /usr/made-in-the-root"], ENV, out, what="touch")
        assert (job / ROOT_NAME / "tree" / "usr" / "made-in-the-root").exists()
        # ... and a build step, as the build user, may not.
        with pytest.raises(BuildFailed):
            env.run(["sh", "-c", "touch /usr/made-by-the-build"], env.area, ENV, 30, out)
    assert not (job / ROOT_NAME).exists()
    assert not Path("/usr/made-in-the-root").exists()


# -- (e) the farm's own repository, over the network the root shares ---------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_extra_sources_reach_a_repository_on_this_machine(settings: WorkerSettings, job: Path,
                                                         tmp_path: Path, out: IO[str]) -> None:
    repo = tmp_path / "repo"
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: pkgfarm-published\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: T <t@example.org>\nDescription: published minutes ago\n a test\n")
    repo.mkdir()
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root),
                    str(repo / "pkgfarm-published_1.0_all.deb")], check=True,
                   capture_output=True)
    packages = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=repo,
                              capture_output=True, check=True).stdout
    (repo / "Packages").write_bytes(packages)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                               str(port), "--directory", str(repo)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        with CleanEnvironment(settings, ARCH, job, out=out) as env:
            env.extra_sources([f"deb [trusted=yes] http://127.0.0.1:{port}/ ./"])
            env.install(["pkgfarm-published (>= 1.0)"], out)
            env.run(["dpkg-query", "-W", "pkgfarm-published"], env.area, ENV, 30, out,
                    what="dpkg-query")
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert not installed_on_host("pkgfarm-published")


def test_a_missing_build_dependency_is_named(settings: WorkerSettings, job: Path,
                                            out: IO[str]) -> None:
    with CleanEnvironment(settings, ARCH, job, out=out) as env, \
            pytest.raises(BuildFailed, match="pkgfarm-no-such-package") as info:
        env.install(["pkgfarm-no-such-package"], out)
    assert "pkgfarm-no-such-package but it is not installable" in info.value.message

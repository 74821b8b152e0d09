"""worker/environment.py and worker/debsource.build_source without a clean root: running process
trees, host installs, choosing an environment, the base's freshness, and the dpkg-buildpackage
flags each job gets."""

from __future__ import annotations

import dataclasses
import fcntl
import io
import itertools
import json
import os
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import pytest

from common.arch import host_arch
from common.config import WorkerSettings
from common.errors import BuildCancelled, BuildFailed
from tests.unit import native_source
from worker.environment import (
    ROOT_NAME,
    CleanEnvironment,
    HostEnvironment,
    environment_for,
)
from worker.environment import bases as envmod
from worker.environment.bases import StageRelay, base_is_fresh, base_path, can_run
from worker.environment.host import missing_packages
from worker.environment.processes import run_process
from worker.formats.deb.source import binary_kinds, build_source

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return state in ("Z", "X")


# -- run_process -------------------------------------------------------------------------------


def test_output_is_copied_and_status_checked(tmp_path: Path) -> None:
    out = io.StringIO()
    run_process(["sh", "-c", "echo one; echo two >&2"], cwd=tmp_path, env=ENV, timeout=10,
                out=out)
    assert out.getvalue() == "one\ntwo\n"
    with pytest.raises(BuildFailed, match="the step failed with exit status 3; hint"):
        run_process(["sh", "-c", "exit 3"], cwd=tmp_path, env=ENV, timeout=10, out=out,
                    what="the step", hint="; hint")


def test_timeout_kills_the_whole_tree(tmp_path: Path) -> None:
    script = f'sleep 300 & echo $! > {tmp_path}/bg.pid; echo $$ > {tmp_path}/sh.pid; sleep 120'
    start = time.monotonic()
    with pytest.raises(BuildFailed, match="longer than its limit of 1 s"):
        run_process(["sh", "-c", script], cwd=tmp_path, env=ENV, timeout=1, out=io.StringIO())
    assert time.monotonic() - start < 10
    pids = [int((tmp_path / n).read_text()) for n in ("bg.pid", "sh.pid")]
    deadline = time.monotonic() + 5
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(p) for p in pids)


def test_cancel_stops_it(tmp_path: Path) -> None:
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    with pytest.raises(BuildCancelled):
        run_process(["sleep", "60"], cwd=tmp_path, env=ENV, timeout=60, out=io.StringIO(),
                    cancel=cancel)


def test_a_missing_program_is_a_failed_build(tmp_path: Path) -> None:
    with pytest.raises(BuildFailed, match="could not be started"):
        run_process(["/nonexistent/tool"], cwd=tmp_path, env=ENV, timeout=5,
                    out=io.StringIO(), what="the tool")


# -- HostEnvironment ---------------------------------------------------------------------------


def test_host_install_of_installed_packages_does_nothing(tmp_path: Path) -> None:
    env = HostEnvironment(tmp_path, install_deps=False)
    with env:
        env.install(["dpkg", "coreutils (>= 8) | busybox"], io.StringIO())
    assert missing_packages(["dpkg", "pkgfarm-no-such-package"]) == ["pkgfarm-no-such-package"]


def test_host_install_refused_names_what_is_missing(tmp_path: Path) -> None:
    env = HostEnvironment(tmp_path, install_deps=False)
    with pytest.raises(BuildFailed, match="missing build dependencies: pkgfarm-no-such-pkg"):
        env.install(["dpkg", "pkgfarm-no-such-pkg (>= 1)"], io.StringIO())


def test_host_build_dep_check_without_installing(tmp_path: Path) -> None:
    tree = native_source.make_tree(tmp_path, build_depends="pkgfarm-no-such-pkg (>= 2)")
    env = HostEnvironment(tmp_path, install_deps=False)
    with pytest.raises(BuildFailed, match="pkgfarm-no-such-pkg"):
        env.build_dep(tree, io.StringIO(), arch_indep=False)
    fine = native_source.make_tree(tmp_path / "fine", build_depends="dpkg")
    env.build_dep(fine, io.StringIO(), arch_indep=None)


def test_host_run_in_the_sandbox_writes_only_its_folder(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    with HostEnvironment(work, sandbox="bwrap") as env:
        env.run(["sh", "-c", "echo hi > inside"], env.area, ENV, 10, io.StringIO())
        assert (env.area / "inside").read_text() == "hi\n"
        # /tmp is private to the sandbox: what is written there never reaches the machine's.
        outside = Path(f"/tmp/pkgfarm-sandbox-test-{os.getpid()}")
        env.run(["sh", "-c", f"echo hi > {outside}"], env.area, ENV, 10, io.StringIO())
        assert not outside.exists()
        # The build's own folder, above its area, is the worker's: a step writing there
        # (here under /tmp, the sandbox's private one) never reaches the folder.
        env.run(["sh", "-c", f"mkdir -p {work} && echo hi > {work}/beside"], env.area, ENV,
                10, io.StringIO())
        assert not (work / "beside").exists()
        forbidden = Path("/var/lib/pkgfarm-sandbox-test-must-not-exist")
        try:
            with pytest.raises(BuildFailed, match="may write only inside its own folder"):
                env.run(["sh", "-c", f"echo hi > {forbidden}"], env.area, ENV, 10,
                        io.StringIO())
            assert not forbidden.exists()
        finally:
            forbidden.unlink(missing_ok=True)


def test_host_extra_sources_use_a_copy_of_the_source_parts(tmp_path: Path) -> None:
    env = HostEnvironment(tmp_path, extra_apt_lines=["deb [trusted=yes] http://m/repo s main"])
    options = env._apt_options()
    assert options[0] == "-o"
    parts = Path(options[1].split("=", 1)[1])
    assert parts.parent == tmp_path  # the worker's folder, not the build's area
    assert "http://m/repo" in (parts / "zz-pkgfarm-extra.list").read_text()
    assert HostEnvironment(tmp_path)._apt_options() == []


# -- choosing an environment -------------------------------------------------------------------


def settings(tmp_path: Path, **changes: object) -> WorkerSettings:
    values: dict[str, object] = {"work_dir": str(tmp_path / "work"),
                                 "base_dir": str(tmp_path / "bases")}
    values.update(changes)
    return WorkerSettings(**values)  # type: ignore[arg-type]


def test_environment_for_host_mode(tmp_path: Path) -> None:
    env = environment_for(settings(tmp_path, environment="host", sandbox="none"), "arm64",
                          tmp_path, ["deb [trusted=yes] http://m/repo s main"])
    assert isinstance(env, HostEnvironment)
    assert env.sandbox == "none"


def test_environment_for_clean_mode(tmp_path: Path) -> None:
    env = environment_for(settings(tmp_path), host_arch(), tmp_path)
    assert isinstance(env, CleanEnvironment)
    assert env.arch == host_arch()
    assert env.root == tmp_path.resolve() / ROOT_NAME
    every = environment_for(settings(tmp_path), "all", tmp_path)
    assert every.arch == host_arch()


def foreign_arch() -> str:
    return "arm64" if host_arch() != "arm64" else "amd64"


@pytest.mark.skipif(can_run(foreign_arch()), reason="this machine emulates the other arch")
def test_clean_mode_refuses_an_arch_it_cannot_run(tmp_path: Path) -> None:
    with pytest.raises(BuildFailed, match="qemu-user-static"):
        environment_for(settings(tmp_path), foreign_arch(), tmp_path)
    # A YAML definition's architecture is only a label: the machine's arch stands in.
    env = environment_for(settings(tmp_path), foreign_arch(), tmp_path, label_only=True)
    assert env.arch == host_arch()


def test_clean_wrap_binds_only_the_area(tmp_path: Path) -> None:
    env = CleanEnvironment(settings(tmp_path), host_arch(), tmp_path)
    with pytest.raises(BuildFailed, match="outside its `with` block"):
        env.wrap(["true"], tmp_path)
    env.root.mkdir()
    argv = env.wrap(["make"], tmp_path / "area" / "src")
    root, area = str(env.root), str(env.area)
    assert argv[:4] == ["bwrap", "--bind", f"{root}/tree", "/"]
    assert argv[-3:] == ["--chdir", str(tmp_path / "area" / "src"), "make"]
    pairs = list(itertools.pairwise(argv))
    assert ("--bind", area) in pairs
    assert "--unshare-pid" in argv and "--die-with-parent" in argv
    assert "--unshare-net" not in argv  # the environment's own commands (apt) are online
    assert ("--cap-drop", "ALL") in pairs
    assert "CAP_SYS_ADMIN" not in argv
    # A build step: offline, as the build user, with no capabilities.
    step = env.wrap(["make"], env.area, network=False, uid=64999)
    assert "--unshare-net" in step
    assert step[-9:] == ["setpriv", "--reuid=64999", "--regid=64999", "--clear-groups",
                         "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
                         "make"]
    # With an overlay, a mount namespace of its own mounts it, then bwrap runs on it.
    env.lower = tmp_path / "lower"
    argv = env.wrap(["make"], tmp_path)
    assert argv[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert argv[argv.index("pkgfarm-mount") + 1:argv.index("bwrap")] == [
        str(tmp_path / "lower"), f"{root}/upper", f"{root}/work", f"{root}/merged"]
    assert argv[argv.index("bwrap") + 1:argv.index("bwrap") + 4] == [
        "--bind", f"{root}/merged", "/"]


# -- the base ----------------------------------------------------------------------------------


def test_base_freshness(tmp_path: Path) -> None:
    ws = settings(tmp_path, base_max_age=3600)
    path = base_path(ws, "amd64")
    assert path == tmp_path / "bases" / "bookworm-amd64.tar.zst"
    assert not base_is_fresh(ws, "amd64")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"tar")
    assert not base_is_fresh(ws, "amd64")  # nothing recorded about it
    envmod.base_meta_path(ws, "amd64").write_text(json.dumps(
        {"suite": "bookworm", "mirror": ws.base_mirror, "include": ["apt-utils"]}))
    assert not base_is_fresh(ws, "amd64")  # made with other packages than bases get now
    envmod.base_meta_path(ws, "amd64").write_text(json.dumps(
        {"suite": "bookworm", "mirror": ws.base_mirror, "include": list(envmod.BASE_INCLUDE)}))
    assert base_is_fresh(ws, "amd64")
    old = time.time() - 7200
    os.utime(path, (old, old))
    assert not base_is_fresh(ws, "amd64")
    os.utime(path, None)
    other = dataclasses.replace(ws, base_mirror="http://mirror.example/debian")
    assert not base_is_fresh(other, "amd64")


def test_create_base_keeps_a_fresh_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    ws = settings(tmp_path)
    path = base_path(ws, "amd64")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"tar")
    envmod.base_meta_path(ws, "amd64").write_text(json.dumps(
        {"suite": ws.base_suite, "mirror": ws.base_mirror,
         "include": list(envmod.BASE_INCLUDE)}))

    def boom(*args: object, **kwargs: object) -> Path:
        raise AssertionError("the base was made again")

    monkeypatch.setattr(envmod, "_make_base", boom)
    assert envmod.create_base(ws, "amd64") == path


def test_base_tree_versions(tmp_path: Path) -> None:
    """The base is unpacked once per version; an old version goes when nobody uses it."""
    content = tmp_path / "content"
    (content / "etc").mkdir(parents=True)
    (content / "etc" / "os-release").write_text("ID=test\n")
    base = tmp_path / "bases" / "test-amd64.tar.zst"
    base.parent.mkdir()
    subprocess.run(["tar", "--zstd", "-cf", str(base), "-C", str(content), "."], check=True)
    first = envmod.base_tree(base)
    assert (first / "etc" / "os-release").read_text() == "ID=test\n"
    assert envmod.base_tree(base) == first  # kept

    with open(first.parent / f"{first.name}.inuse", "a") as held:
        fcntl.flock(held, fcntl.LOCK_SH)
        os.utime(base, (time.time() + 5, time.time() + 5))
        second = envmod.base_tree(base)
        assert second != first
        assert first.is_dir()  # still in use: kept
    os.utime(base, (time.time() + 10, time.time() + 10))
    third = envmod.base_tree(base)
    assert sorted(p.name for p in third.parent.iterdir() if p.is_dir()) == [third.name]


# -- build_source's jobs -----------------------------------------------------------------------


class FakeEnvironment:
    """Records what build_source asks for, and 'builds' by dropping .deb files."""

    def __init__(self, arch: str, makes: Sequence[str], tree: Path,
                 links: Sequence[str] = ()) -> None:
        self.arch = arch
        self.makes = list(makes)
        self.links = list(links)
        self.area = tree.parent
        self.private = tree.parent.parent / "private"
        self.build_uid = None
        self.calls: list[tuple[object, ...]] = []

    def __enter__(self) -> FakeEnvironment:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def extra_sources(self, lines: Sequence[str]) -> None:
        self.calls.append(("extra_sources", list(lines)))

    def install(self, packages: Sequence[str], out: IO[str]) -> None:
        self.calls.append(("install", list(packages)))

    def build_dep(self, source_dir: Path, out: IO[str], arch_indep: bool | None) -> None:
        self.calls.append(("build_dep", arch_indep))

    def run(self, argv: Sequence[str], cwd: Path, env: dict[str, str], timeout: float,
            out: IO[str], cancel: threading.Event | None = None, *,
            what: str = "the build script", network: bool = False) -> None:
        self.calls.append(("run", list(argv), env["DEB_BUILD_OPTIONS"], network))
        for name in self.makes:
            (cwd.parent / name).write_bytes(b"deb")
        for name in self.links:  # what a hostile build system leaves: links to host files
            (cwd.parent / name).symlink_to("/etc/shadow")


def test_build_source_flags(tmp_path: Path) -> None:
    tree = native_source.make_tree(tmp_path)
    assert binary_kinds(tree) == (True, True)
    arch = host_arch()
    fake = FakeEnvironment(arch, [f"pkgfarm-tiny_1.0_{arch}.deb",
                                  f"pkgfarm-tiny_1.0_{arch}.buildinfo"], tree,
                           links=[f"pkgfarm-evil_1.0_{arch}.deb"])
    result = build_source(tree, arch, fake, io.StringIO(), timeout=60, parallel=3)
    assert fake.calls == [("build_dep", False),
                          ("run", ["dpkg-buildpackage", "-us", "-uc", "-B"],
                           "parallel=3 noautodbgsym", False)]
    # Collected from the worker's own folder; the link the build left is not an archive.
    assert [a.name for a in result.archives] == [f"pkgfarm-tiny_1.0_{arch}.deb"]
    assert result.archives[0].parent.parent == fake.private / "pack"
    assert [p.name for p in result.by_products] == [f"pkgfarm-tiny_1.0_{arch}.buildinfo"]

    tree = native_source.make_tree(tmp_path / "again")
    fake = FakeEnvironment(arch, ["pkgfarm-tiny-data_1.0_all.deb"], tree)
    result = build_source(tree, "all", fake, io.StringIO(), timeout=60, run_tests=False)
    assert fake.calls[0] == ("build_dep", True)
    assert fake.calls[1][1] == ["dpkg-buildpackage", "-us", "-uc", "-A"]
    assert "nocheck" in str(fake.calls[1][2])
    assert result.by_products == ()


def test_build_source_uses_b_when_there_is_one_kind(tmp_path: Path) -> None:
    tree = native_source.make_tree(tmp_path)
    control = tree / "debian" / "control"
    text = control.read_text()
    control.write_text(text[:text.index("Package: pkgfarm-tiny-data")])
    fake = FakeEnvironment(host_arch(), ["x_1_all.deb"], tree)
    with pytest.raises(BuildFailed, match="no architecture-independent"):
        build_source(tree, "all", fake, io.StringIO(), timeout=60)
    build_source(tree, host_arch(), fake, io.StringIO(), timeout=60)
    assert fake.calls[0] == ("build_dep", None)
    assert fake.calls[1][1] == ["dpkg-buildpackage", "-us", "-uc", "-b"]


def test_build_source_refuses_an_arch_the_environment_does_not_run(tmp_path: Path) -> None:
    tree = native_source.make_tree(tmp_path)
    with pytest.raises(BuildFailed, match="cannot build"):
        build_source(tree, foreign_arch(), FakeEnvironment(host_arch(), [], tree),
                     io.StringIO(), timeout=60)


def test_build_source_without_archives_fails(tmp_path: Path) -> None:
    tree = native_source.make_tree(tmp_path)
    with pytest.raises(BuildFailed, match=r"made no \.deb"):
        build_source(tree, host_arch(), FakeEnvironment(host_arch(), [], tree), io.StringIO(),
                     timeout=60)


def test_base_stages_reach_whoever_waits() -> None:
    out = io.StringIO()
    seen: list[str] = []
    relay = StageRelay(out, seen.append)
    lines = ["I: automatically chosen mode: root\n", "Get:1 http://deb.debian.org bookworm\n",
             "I: downloading packages with apt...\n", "W: a warning\n",
             "I: extracting archives...\n"]
    for line in lines:
        assert relay.write(line) == len(line)
    relay.flush()
    assert out.getvalue() == "".join(lines)  # the log keeps everything
    assert seen == ["base: automatically chosen mode: root",
                    "base: downloading packages with apt...", "base: extracting archives..."]

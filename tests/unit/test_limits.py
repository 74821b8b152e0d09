"""A build's limits: the log's cap, the measurements of the Watch, the cgroup's files, the
words a failure gets, and the worker's refusal to build where scripts could read its secrets."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from common.config import load_settings
from common.errors import BuildFailed, ConfigError
from worker import cli as worker_cli
from worker.environment import limits as limitsmod
from worker.environment.host import exposed_sockets, listening_sockets, sandboxed
from worker.environment.limits import (
    MemoryGroup,
    StepLimits,
    Watch,
    find_builds_parent,
    memory_of,
    remove_shared_files,
    shared_files,
)
from worker.environment.processes import LOG_CUT, BuildLog, run_process

ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
MiB = 2**20


# -- the log's cap -----------------------------------------------------------------------------


def test_a_flood_is_cut_once_and_drained_while_the_worker_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "build.log"
    with BuildLog(path, limit=1 * MiB) as out:
        out.write("pkgfarm: before\n")
        start = time.monotonic()
        run_process(["sh", "-c", "yes flood | head -c 20000000; echo tail-line"], cwd=tmp_path,
                    env=ENV, timeout=60, out=out)
        assert time.monotonic() - start < 30  # drained: the command never waited on the pipe
        run_process(["echo", "a later step"], cwd=tmp_path, env=ENV, timeout=10, out=out)
        out.write("pkgfarm: after\n")
    data = path.read_bytes()
    marker = LOG_CUT.format(mib=1).encode()
    assert data.count(marker) == 1
    before, after = data.split(marker)
    assert len(before) == len("pkgfarm: before\n") + 1 * MiB
    assert set(before[len("pkgfarm: before\n"):].split(b"\n")) <= {b"flood", b"floo", b"fl",
                                                                   b"f", b"flo", b""}
    # Past the cut the commands' output is dropped; the worker's own lines are kept.
    assert after == b"pkgfarm: after\n"


def test_output_without_newlines_is_copied_in_pieces(tmp_path: Path) -> None:
    out = io.StringIO()
    with pytest.raises(BuildFailed, match="exit status 3"):
        run_process(["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x; echo; exit 3"],
                    cwd=tmp_path, env=ENV, timeout=30, out=out)
    assert len(out.getvalue()) == 3000001


def test_the_tail_gets_the_last_lines(tmp_path: Path) -> None:
    import collections

    tail: collections.deque[str] = collections.deque(maxlen=5)
    run_process(["sh", "-c", "seq 1 100000"], cwd=tmp_path, env=ENV, timeout=30,
                out=io.StringIO(), tail=tail)
    assert list(tail) == [str(n) for n in range(99996, 100001)]


# -- the watch ---------------------------------------------------------------------------------


def test_memory_of_counts_what_a_process_holds() -> None:
    proc = subprocess.Popen(["perl", "-e", '$x = "a" x (60 * 1024 * 1024); sleep 30'])
    try:
        deadline = time.monotonic() + 10
        while memory_of(proc.pid) < 60 * MiB and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 60 * MiB <= memory_of(proc.pid) < 200 * MiB
    finally:
        proc.kill()
        proc.wait()
    assert memory_of(proc.pid) == 0  # gone


def test_the_watch_stops_processes_that_together_pass_the_memory_limit(tmp_path: Path) -> None:
    # No build user (a worker that is not root): the step's processes are those below it.
    watch = Watch(tmp_path, StepLimits(memory=150 * MiB))
    hogs = " ".join(["perl -e '$x = \"a\" x (40 * 1024 * 1024); sleep 60' &"] * 3)
    start = time.monotonic()
    with pytest.raises(BuildFailed, match=r"MiB of memory \(all its processes together.*"
                                          r"more than its memory limit of 150 MiB"):
        run_process(["sh", "-c", f"{hogs} wait"], cwd=tmp_path, env=ENV, timeout=60,
                    out=io.StringIO(), watch=watch)
    assert time.monotonic() - start < 10
    # Each under the limit alone: one of them passes.
    run_process(["perl", "-e", '$x = "a" x (40 * 1024 * 1024); sleep 2'], cwd=tmp_path,
                env=ENV, timeout=60, out=io.StringIO(), watch=Watch(tmp_path, watch.limits))


def test_tmpfs_sizes_follow_the_smaller_limit() -> None:
    assert StepLimits().tmpfs("/tmp") == ["--perms", "1777", "--tmpfs", "/tmp"]
    assert StepLimits(memory=512 * MiB, disk=64 * MiB).tmpfs_size == 64 * MiB
    assert StepLimits(memory=32 * MiB, disk=0).tmpfs("/dev/shm") == [
        "--perms", "1777", "--size", str(32 * MiB), "--tmpfs", "/dev/shm"]


@pytest.mark.skipif(os.geteuid() != 0, reason="bubblewrap as root, like a root worker")
def test_the_sandbox_in_memory_folders_are_sized_and_counted(tmp_path: Path) -> None:
    area = tmp_path / "area"
    area.mkdir()
    limits = StepLimits(disk=8 * MiB)
    argv = sandboxed(["sh", "-c", "dd if=/dev/zero of=/var/tmp/a bs=1M count=6 && "
                      "dd if=/dev/zero of=/dev/shm/b bs=1M count=6; sleep 30"],
                     area, area, "bwrap", limits=limits)
    start = time.monotonic()
    with pytest.raises(BuildFailed, match=r"used 12 MiB of disk .*more than its disk limit"):
        run_process(argv, cwd=area, env=ENV, timeout=60, out=io.StringIO(),
                    watch=Watch(area, limits, sandboxed=True))
    assert time.monotonic() - start < 10
    out = io.StringIO()
    with pytest.raises(BuildFailed, match=r"No space left on device.*disk limit is 8 MiB"):
        run_process(sandboxed(["sh", "-c", "for i in 1 2 3; do "
                               "dd if=/dev/zero of=/tmp/f$i bs=1M count=4 || exit 1; done"],
                              area, area, "bwrap", limits=StepLimits(disk=8 * MiB)),
                    cwd=area, env=ENV, timeout=60, out=out,
                    watch=Watch(area, limits, sandboxed=True))


@pytest.mark.skipif(os.geteuid() != 0, reason="files of another user")
def test_shared_files_of_a_user_are_found_through_open_folders(tmp_path: Path) -> None:
    uid = 70123
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "root-file").write_text("x")
    mine = shared / "mine"
    mine.mkdir()
    (mine / "inside").write_bytes(b"x" * 10000)
    opened = shared / ".X11-unix"  # a folder anyone may write, someone else's
    opened.mkdir()
    opened.chmod(0o1777)
    (opened / "hidden").write_text("y")
    link = shared / "link"
    link.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text("keep me")
    for path in (mine, mine / "inside", opened / "hidden"):
        os.chown(path, uid, uid)
    os.lchown(link, uid, uid)
    found = shared_files(uid, [shared])
    assert sorted(found) == sorted([mine, opened / "hidden", link])
    remove_shared_files(uid, [shared])
    assert sorted(p.name for p in shared.iterdir()) == [".X11-unix", "root-file"]
    assert list(opened.iterdir()) == []
    assert (tmp_path / "elsewhere").read_text() == "keep me"  # the link, not its target


def test_a_failure_names_the_limit_it_probably_reached(tmp_path: Path) -> None:
    limits = StepLimits(memory=512 * MiB, processes=100, disk=64 * MiB)
    watch = Watch(tmp_path, limits)
    assert "the disk limit" in watch.explain(153, [])
    assert "the disk limit" in watch.explain(-25, [])
    full = ["dd: error writing 'x': No space left on device"]
    # A sandbox's in-memory folders are bounded; without one, the machine's disk is full.
    assert "disk limit is 64 MiB" in Watch(tmp_path, limits, sandboxed=True).explain(1, full)
    assert watch.explain(1, full) == ""
    assert "memory limit of 512 MiB" in watch.explain(12, ["Out of memory in perl"])
    assert "processes limit" in watch.explain(
        254, ["bash: fork: retry: Resource temporarily unavailable"])
    assert watch.explain(1, ["make: *** [all] Error 1"]) == ""
    assert Watch(tmp_path, StepLimits()).explain(153, ["No space left on device"]) == ""


# -- the cgroup --------------------------------------------------------------------------------


def fake_cgroup_top(tmp_path: Path, controllers: str = "cpu memory pids") -> Path:
    top = tmp_path / "cgroup"
    top.mkdir()
    (top / "cgroup.controllers").write_text(controllers + "\n")
    (top / "cgroup.subtree_control").write_text("cpu\n")
    return top


def test_cgroup_mounts_are_read_from_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "30 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
        "31 1 0:27 / /sys/fs/cgroup/memory rw shared:5 - cgroup cgroup rw,memory\n"
        "32 1 0:26 /sub /mnt/part rw shared:4 - cgroup2 cgroup2 rw\n"
        "33 1 8:1 / / rw - ext4 /dev/sda1 rw\n")
    assert limitsmod.cgroup2_mounts(info) == [Path("/sys/fs/cgroup")]


def test_the_builds_parent_needs_the_memory_controller(tmp_path: Path) -> None:
    assert find_builds_parent([fake_cgroup_top(tmp_path, "cpu pids hugetlb")]) is None
    assert not (tmp_path / "cgroup" / "pkgfarm-builds").exists()


def test_a_memory_group_is_made_with_its_limit(tmp_path: Path) -> None:
    top = fake_cgroup_top(tmp_path)
    (top / "pkgfarm-builds").mkdir()  # (as a real cgroupfs makes it, with its files)
    (top / "pkgfarm-builds" / "cgroup.subtree_control").write_text("\n")
    parent = find_builds_parent([top])
    assert parent == top / "pkgfarm-builds"
    assert (top / "cgroup.subtree_control").read_text() == "+memory"  # what was written
    assert (parent / "cgroup.subtree_control").read_text() == "+memory"
    group = MemoryGroup.make("build-65000", 512 * MiB, parent)
    assert group is not None and group.path == parent / "build-65000"
    assert (group.path / "memory.max").read_text() == str(512 * MiB)
    assert group.oom_kills() == 0
    # (a real cgroupfs makes the group's files itself; here the kernel's count is written)
    (group.path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n")
    assert group.oom_kills() == 2
    assert group.enter()[-1] == str(group.path / "cgroup.procs")
    watch = Watch(tmp_path, StepLimits(memory=512 * MiB), 65000, group=group)
    assert "reached its memory limit of 512 MiB" in (watch.ended("the build script") or "")
    assert "stopped 2 of its processes" in (watch.problem("the build script") or "")
    assert MemoryGroup.make("build-65001", 0, parent) is None  # no limit, no group


def test_the_cgroup_prefix_moves_the_command_into_the_group(tmp_path: Path) -> None:
    procs = tmp_path / "cgroup.procs"
    group = MemoryGroup(tmp_path)
    result = subprocess.run([*group.enter(), "sh", "-c", "echo ran"], capture_output=True,
                            text=True)
    assert result.stdout == "ran\n"
    assert procs.read_text() == "0\n"  # "0": the writing process itself, then exec
    group.path = tmp_path / "missing"
    failed = subprocess.run([*group.enter(), "true"], capture_output=True)
    assert failed.returncode == 125  # a step that cannot enter its group does not run


# -- sockets -----------------------------------------------------------------------------------


def test_sockets_under_a_bound_folder_are_found(tmp_path: Path) -> None:
    bound = tmp_path / "opt"
    bound.mkdir()
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    listeners = []
    for path in (bound / "a.sock", elsewhere / "b.sock"):
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(path))
        listener.listen(1)
        listeners.append(listener)
    try:
        listed = listening_sockets()
        assert bound / "a.sock" in listed and elsewhere / "b.sock" in listed
        assert exposed_sockets([bound], listed) == [bound / "a.sock"]
        (tmp_path / "link").symlink_to(bound)
        assert exposed_sockets([tmp_path / "link"], listed) == [bound / "a.sock"]
    finally:
        for listener in listeners:
            listener.close()


# -- secrets the scripts could read ----------------------------------------------------------


def test_secrets_in_a_config_are_found() -> None:
    data = yaml.safe_load("""
broker_url: redis://:s3cret@redis.example:6379/0
worker: {password: pw, username: worker, password_env: NOT_A_SECRET}
client: {token: abc}
storage: {secret_access_key: k, access_key_id: id}
master:
  users: {admin: {password_hash: "scrypt:x", roles: [admin]}}
  webhooks: [{url: "https://user:pw@hooks.example/x", secret_env: HOOK}]
debian_sources: ["deb-src http://deb.debian.org/debian bookworm main"]
""")
    assert worker_cli.config_secrets(data) == [
        "broker_url", "worker.password", "client.token", "storage.secret_access_key",
        "master.users.admin.password_hash", "master.webhooks[0].url"]
    assert worker_cli.config_secrets({"broker_url": "redis://redis:6379/0"}) == []


def write(path: Path, data: dict[str, object], mode: int) -> Path:
    path.write_text(yaml.safe_dump(data))
    path.chmod(mode)
    return path


def test_a_readable_config_with_a_secret_is_refused_without_a_sandbox(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    none = {"environment": "host", "sandbox": "none"}
    config = write(tmp_path / "w.yaml", {"broker_url": "redis://:pw@r:6379/0",
                                         "worker": none}, 0o644)
    with pytest.raises(ConfigError, match=r"holds secrets \(broker_url\) and anyone may read"):
        worker_cli.check_builds_cannot_read_secrets(load_settings(config))
    config.chmod(0o600)
    worker_cli.check_builds_cannot_read_secrets(load_settings(config))
    # Confined builds do not see the config: no refusal.
    write(config, {"broker_url": "redis://:pw@r:6379/0",
                   "worker": {"environment": "host", "sandbox": "bwrap"}}, 0o644)
    worker_cli.check_builds_cannot_read_secrets(load_settings(config))
    write(config, {"worker": none}, 0o644)
    worker_cli.check_builds_cannot_read_secrets(load_settings(config))


def test_a_worker_that_is_not_root_refuses_to_build_without_a_sandbox(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    config = write(tmp_path / "w.yaml", {"worker": {"environment": "host",
                                                    "sandbox": "none"}}, 0o600)
    with pytest.raises(ConfigError, match="does not run as root: build scripts would run as "
                                          "this worker's own user"):
        worker_cli.check_builds_cannot_read_secrets(load_settings(config))
    for worker in ({"environment": "host", "sandbox": "bwrap"}, {"environment": "clean"}):
        write(config, {"worker": worker}, 0o600)
        worker_cli.check_builds_cannot_read_secrets(load_settings(config))


@pytest.mark.skipif(os.geteuid() != 0, reason="bubblewrap as root, like a root worker")
def test_hidden_folders_inside_each_other_and_around_the_area(tmp_path: Path) -> None:
    # The worker's config folder holds its data folder and config; its work folder holds the
    # area: every one is covered, and the area still hangs where it is.
    config_dir, work = tmp_path / "etc", tmp_path / "work"
    (config_dir / "data").mkdir(parents=True)
    (config_dir / "config.yaml").write_text("secret")
    area = work / "job1" / "area"
    area.mkdir(parents=True)
    hidden = [config_dir / "data", work, config_dir / "config.yaml", config_dir]
    script = (f"ls -A {config_dir}; cat {config_dir}/config.yaml; touch {config_dir}/x; "
              f"touch {work}/x; echo made > {area}/made")
    out = io.StringIO()
    run_process(sandboxed(["sh", "-c", script], area, area, "bwrap", hidden=hidden),
                cwd=area, env=ENV, timeout=30, out=out)
    assert "secret" not in out.getvalue()
    assert out.getvalue().count("Read-only file system") == 2, out.getvalue()
    assert (area / "made").read_text() == "made\n"
    assert not (config_dir / "x").exists() and not (work / "x").exists()

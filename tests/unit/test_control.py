"""worker/formats/deb/package.py and worker/build.py: the generated control file,
Installed-Size, and real builds with dpkg-deb."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from debian.deb822 import Deb822

from common.definition import PackageDefinition, parse_definition
from common.errors import BuildFailed
from worker.build import build_definition
from worker.formats.deb.package import control_fields, control_text, installed_size_kib

HELLO_SH = b"#!/bin/sh\necho hello from pkgfarm\n"


def make_definition(**changes: Any) -> PackageDefinition:
    values: dict[str, Any] = {
        "name": "hello", "version": "1.0.0", "release": "1", "architecture": "any",
        "description": "Say hello\nA friendly program\n  that greets.\n\nSecond paragraph.",
        "maintainer": "Jane Doe <jane@example.org>", "build": "true",
        "depends": ("bash (>= 5)", "coreutils"), "section": "utils", "priority": "optional",
    }
    values.update(changes)
    return PackageDefinition(**values)


# -- control_fields --------------------------------------------------------------------------


def test_control_fields_of_an_any_package() -> None:
    control = control_fields(make_definition(), "arm64", 42)
    assert control["Package"] == "hello"
    assert control["Version"] == "1.0.0-1"
    assert control["Architecture"] == "arm64"
    assert control["Maintainer"] == "Jane Doe <jane@example.org>"
    assert control["Installed-Size"] == "42"
    assert control["Depends"] == "bash (>= 5), coreutils"
    assert control["Section"] == "utils"
    assert control["Priority"] == "optional"
    for absent in ("Recommends", "Conflicts", "Provides", "Replaces", "Homepage"):
        assert absent not in control


def test_control_fields_dump_is_a_valid_stanza() -> None:
    text = control_text(control_fields(make_definition(), "amd64", 7))
    assert text == (
        "Package: hello\n"
        "Version: 1.0.0-1\n"
        "Architecture: amd64\n"
        "Maintainer: Jane Doe <jane@example.org>\n"
        "Installed-Size: 7\n"
        "Depends: bash (>= 5), coreutils\n"
        "Section: utils\n"
        "Priority: optional\n"
        "Description: Say hello\n"
        " A friendly program\n"
        "   that greets.\n"
        " .\n"
        " Second paragraph.\n"
    )
    # and it reads back as the same fields
    parsed = Deb822(text)
    assert parsed["Description"].splitlines()[0] == "Say hello"
    assert parsed["Depends"] == "bash (>= 5), coreutils"


def test_all_package_stays_all_for_any_arch() -> None:
    control = control_fields(make_definition(architecture="all"), "amd64", 1)
    assert control["Architecture"] == "all"


def test_listed_arch_package_gets_the_target() -> None:
    control = control_fields(make_definition(architecture=("arm64", "amd64")), "amd64", 1)
    assert control["Architecture"] == "amd64"


def test_optional_relations_and_homepage() -> None:
    d = make_definition(recommends=("less",), conflicts=("hello-old",),
                        provides=("greeter",), replaces=("hello-old (<< 1.0)",),
                        homepage="https://example.org/", depends=())
    control = control_fields(d, "amd64", 1)
    assert "Depends" not in control
    assert control["Recommends"] == "less"
    assert control["Conflicts"] == "hello-old"
    assert control["Provides"] == "greeter"
    assert control["Replaces"] == "hello-old (<< 1.0)"
    assert control["Homepage"] == "https://example.org/"


def test_one_line_description() -> None:
    control = control_fields(make_definition(description="Only a summary"), "amd64", 1)
    assert control["Description"] == "Only a summary"


# -- installed_size_kib ----------------------------------------------------------------------


def test_installed_size_counts_files_in_kib_and_dirs_as_one(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "share").mkdir()
    (root / "usr" / "bin" / "one-byte").write_bytes(b"x")  # 1
    (root / "usr" / "bin" / "exactly-1k").write_bytes(b"x" * 1024)  # 1
    (root / "usr" / "bin" / "just-over-1k").write_bytes(b"x" * 1025)  # 2
    (root / "usr" / "share" / "empty").write_bytes(b"")  # 0
    (root / "usr" / "bin" / "link").symlink_to("one-byte")  # 1
    (root / "DEBIAN").mkdir()  # not counted, nor what it holds
    (root / "DEBIAN" / "control").write_bytes(b"x" * 5000)
    # usr, usr/bin, usr/share: 3 folders
    assert installed_size_kib(root) == 3 + 1 + 1 + 2 + 0 + 1


def test_installed_size_of_big_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "opt").mkdir(parents=True)
    (root / "opt" / "blob").write_bytes(b"\0" * (10 * 1024 * 1024 + 1))
    assert installed_size_kib(root) == 1 + 10 * 1024 + 1


def test_installed_size_of_empty_tree_is_at_least_one(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert installed_size_kib(root) == 1


# -- real builds -----------------------------------------------------------------------------


def prepare(tmp_path: Path, build: str, **package: Any) -> tuple[PackageDefinition, Path]:
    """A work folder as the worker leaves it after unpacking: package.yaml and sources/."""
    workdir = tmp_path / "work"
    (workdir / "sources").mkdir(parents=True)
    script = workdir / "sources" / "hello.sh"
    script.write_bytes(HELLO_SH)
    script.chmod(0o755)
    fields = {
        "name": "hello", "version": "1.0.0", "release": "1", "architecture": "any",
        "description": "Say hello\nA friendly program.\n\nIt greets.\n",
        "maintainer": "Jane Doe <jane@example.org>", "depends": ["bash (>= 5)", "coreutils"],
        "section": "utils",
    }
    fields.update(package)
    (workdir / "package.yaml").write_text(yaml.safe_dump({"package": fields, "build": build}))
    return parse_definition(workdir / "package.yaml", check_sources=False), workdir


INSTALL = 'install -D -m 0755 hello.sh "$DESTDIR/usr/bin/hello"\n'


def run_build(definition: PackageDefinition, workdir: Path, arch: str = "amd64",
              timeout: float = 60) -> tuple[list[Path], list[str], str]:
    messages: list[str] = []
    log_path = workdir.parent / "build.log"
    with open(log_path, "w") as out:
        try:
            result = build_definition(definition, arch, workdir, out, messages.append,
                                      timeout=timeout, install_deps=False)
        finally:
            out.flush()
    return result.archives, messages, log_path.read_text()


def dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True,
                          check=True).stdout


def test_build_produces_a_real_archive(tmp_path: Path) -> None:
    definition, workdir = prepare(tmp_path, INSTALL + 'echo "built it"\n')
    archives, messages, log_text = run_build(definition, workdir, "amd64")
    assert archives == [workdir / "pack" / "out" / "hello_1.0.0-1_amd64.deb"]
    deb = archives[0]
    assert deb.is_file()
    assert "built it" in log_text
    assert any("built hello_1.0.0-1_amd64.deb" in m for m in messages)

    fields = Deb822(dpkg_deb("--field", str(deb)))
    assert fields["Package"] == "hello"
    assert fields["Version"] == "1.0.0-1"
    assert fields["Architecture"] == "amd64"
    assert fields["Maintainer"] == "Jane Doe <jane@example.org>"
    assert fields["Depends"] == "bash (>= 5), coreutils"
    assert fields["Section"] == "utils"
    assert fields["Priority"] == "optional"
    # usr, usr/bin and a small file
    assert fields["Installed-Size"] == "3"
    assert fields["Description"] == "Say hello\n A friendly program.\n .\n It greets."

    contents = dpkg_deb("--contents", str(deb)).splitlines()
    hello = [line for line in contents if line.endswith(" ./usr/bin/hello")]
    assert len(hello) == 1
    perms, owner, size = hello[0].split()[:3]
    assert perms == "-rwxr-xr-x"
    assert owner == "root/root"
    assert int(size) == len(HELLO_SH)
    assert not any("DEBIAN" in line for line in contents)

    extracted = tmp_path / "x"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(extracted)], check=True)
    assert (extracted / "usr" / "bin" / "hello").read_bytes() == HELLO_SH

    md5sums = dpkg_deb("--info", str(deb), "md5sums")
    assert md5sums == f"{hashlib.md5(HELLO_SH, usedforsecurity=False).hexdigest()}  usr/bin/hello\n"


def test_all_package_is_named_all(tmp_path: Path) -> None:
    definition, workdir = prepare(tmp_path, INSTALL, architecture="all")
    archives, _, _ = run_build(definition, workdir, "amd64")
    assert [a.name for a in archives] == ["hello_1.0.0-1_all.deb"]
    assert dpkg_deb("--field", str(archives[0]), "Architecture").strip() == "all"


def test_build_for_another_arch(tmp_path: Path) -> None:
    definition, workdir = prepare(tmp_path, INSTALL)
    archives, _, _ = run_build(definition, workdir, "arm64")
    assert [a.name for a in archives] == ["hello_1.0.0-1_arm64.deb"]
    assert dpkg_deb("--field", str(archives[0]), "Architecture").strip() == "arm64"


def test_script_environment(tmp_path: Path) -> None:
    script = (
        'test "$(pwd)" = "$(dirname "$HOME")/src"\n'
        'mkdir -p "$DESTDIR/usr/share/hello"\n'
        'printf "%s|%s|%s|%s\\n" "$PKGFARM_PACKAGE" "$PKGFARM_VERSION" "$PKGFARM_ARCH" '
        '"$DEB_HOST_ARCH" > "$DESTDIR/usr/share/hello/env"\n'
    )
    definition, workdir = prepare(tmp_path, script)
    run_build(definition, workdir, "arm64")
    env_file = workdir / "pack" / "root" / "usr" / "share" / "hello" / "env"
    assert env_file.read_text() == "hello|1.0.0-1|arm64|arm64\n"


def test_failing_script_raises(tmp_path: Path) -> None:
    definition, workdir = prepare(tmp_path, 'echo "about to fail"\nexit 1\n')
    with pytest.raises(BuildFailed, match="exit status 1") as info:
        run_build(definition, workdir)
    # A worker-side failure carries no HTTP status.
    assert not hasattr(info.value, "status")
    assert no_archives(workdir)
    assert "about to fail" in (tmp_path / "build.log").read_text()


def test_failing_command_stops_the_script(tmp_path: Path) -> None:
    """The script runs with -e: a failing command in the middle is a failed build."""
    definition, workdir = prepare(tmp_path, f"false\n{INSTALL}")
    with pytest.raises(BuildFailed):
        run_build(definition, workdir)
    assert no_archives(workdir)


def test_unset_variable_fails(tmp_path: Path) -> None:
    definition, workdir = prepare(tmp_path, 'echo "$NO_SUCH_VARIABLE"\n')
    with pytest.raises(BuildFailed):
        run_build(definition, workdir)


def no_archives(workdir: Path) -> bool:
    """Nothing was packed: the worker's output folder is absent or empty."""
    out = workdir / "pack" / "out"
    return not out.exists() or not any(out.iterdir())


def test_network_is_refused_by_the_workers_policy(tmp_path: Path) -> None:
    definition, workdir = prepare(tmp_path, INSTALL)
    definition = PackageDefinition(**{**definition.__dict__, "build_network": True})
    with pytest.raises(BuildFailed, match=r"worker\.build_network: deny"), \
            open(tmp_path / "build.log", "w") as out:
        build_definition(definition, "amd64", workdir, out, print, timeout=60,
                         network_policy="deny")
    assert no_archives(workdir)


def _gone(pid: int) -> bool:
    """The process no longer exists (a zombie nobody reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return state in ("Z", "X")


def test_timeout_stops_the_script_and_its_children(tmp_path: Path) -> None:
    script = (
        'sleep 300 &\n'
        'echo $! > "$HOME/bg.pid"\n'
        'echo $$ > "$HOME/script.pid"\n'
        'sleep 120\n'
    )
    definition, workdir = prepare(tmp_path, script)
    start = time.monotonic()
    with pytest.raises(BuildFailed, match="longer than its limit of 1 s"):
        run_build(definition, workdir, timeout=1)
    assert time.monotonic() - start < 10
    pids = [int((workdir / "area" / "home" / name).read_text())
            for name in ("bg.pid", "script.pid")]
    deadline = time.monotonic() + 5
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in pids if not _gone(p)] == []
    assert no_archives(workdir)


def test_script_may_not_write_debian_folder(tmp_path: Path) -> None:
    script = INSTALL + 'mkdir -p "$DESTDIR/DEBIAN"\necho "#!/bin/sh" > "$DESTDIR/DEBIAN/postinst"\n'
    definition, workdir = prepare(tmp_path, script)
    with pytest.raises(BuildFailed, match="DEBIAN"):
        run_build(definition, workdir)
    assert no_archives(workdir)


def test_missing_build_depends_without_install(tmp_path: Path) -> None:
    definition, workdir = prepare(tmp_path, INSTALL)
    definition = PackageDefinition(**{**definition.__dict__,
                                      "build_depends": ("pkgfarm-no-such-package-xyz",)})
    with pytest.raises(BuildFailed, match="pkgfarm-no-such-package-xyz"):
        run_build(definition, workdir)


def test_installed_build_depends_are_fine(tmp_path: Path) -> None:
    definition, workdir = prepare(tmp_path, INSTALL)
    definition = PackageDefinition(**{**definition.__dict__, "build_depends": ("dpkg",)})
    archives, _, _ = run_build(definition, workdir)
    assert len(archives) == 1


def test_unknown_arch_is_refused(tmp_path: Path) -> None:
    definition, workdir = prepare(tmp_path, INSTALL)
    with pytest.raises(BuildFailed, match="unknown architecture"):
        run_build(definition, workdir, "amd46")


def test_build_under_a_strict_umask(tmp_path: Path) -> None:
    """A worker run with umask 077 (a hardened service) must still produce an archive.

    dpkg-deb refuses a DEBIAN folder that is not 0755..0775, so the builder has to set the
    folder's mode itself rather than inherit the process umask.
    """
    definition, workdir = prepare(tmp_path, INSTALL)
    old = os.umask(0o077)
    try:
        archives, _, _ = run_build(definition, workdir)
    finally:
        os.umask(old)
    assert [a.name for a in archives] == ["hello_1.0.0-1_amd64.deb"]

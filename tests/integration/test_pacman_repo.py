"""The pacman repository as a stock pacman sees it: packages made by the worker's packer from
definitions, uploaded to a master serving ``formats: [pacman]`` with a signing key, synced
with ``SigLevel = Required`` over HTTP into a throwaway root (its own db path, cache, config
and keyring), installed, run and upgraded; a tampered database is refused; uploads the format
must refuse leave the repository unchanged; the packages satisfy pacman's and repo-add's own
reading."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import requests

from common.definition import parse_definition
from tests.integration.farm import (
    PASSWORD,
    Master,
    PacmanClient,
    repo_files,
    standalone_master,
)
from tests.integration.test_repository import generate_key
from worker.formats import get as get_builder

SOURCE_DATE_EPOCH = "1700000000"


def definition(folder: Path, name: str, version: str, *, arch: str = "any",
               depends: str = "[]", greeting: str = "hello") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(f"""package:
  name: {name}
  version: "{version}"
  release: "1"
  architecture: {arch}
  description: |
    {name}, a pacman test package
    It says {greeting}.
  maintainer: pkgfarm tests <tests@example.org>
  homepage: https://example.org/{name}
  depends: {depends}
build: |
  mkdir -p "$DESTDIR/usr/bin" "$DESTDIR/usr/share/{name}"
  printf '#!/bin/sh\\necho "{greeting} from {name} {version}"\\n' > "$DESTDIR/usr/bin/{name}"
  chmod 755 "$DESTDIR/usr/bin/{name}"
  echo data > "$DESTDIR/usr/share/{name}/data file"
  ln -s ../share/{name} "$DESTDIR/usr/bin/{name}-share"
""")
    return path


def build(path: Path, farm_arch: str = "amd64") -> Path:
    """The archive the worker's packer makes of what the definition's build script stages."""
    d = parse_definition(path)
    work = path.parent / f"build-{d.name}-{d.version}-{farm_arch}"
    shutil.rmtree(work, ignore_errors=True)
    destdir, outdir = work / "destdir", work / "out"
    destdir.mkdir(parents=True)
    outdir.mkdir()
    env = {"DESTDIR": str(destdir), "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH,
           "PATH": os.environ["PATH"]}
    subprocess.run(["bash", "-c", "set -eu\numask 022\n" + d.build], env=env, check=True,
                   cwd=work)
    return get_builder("pacman").pack(d, farm_arch, destdir, outdir, env, sys.stdout)


def upload(master: Master, archive: Path, name: str | None = None,
           sha256: str | None = None) -> requests.Response:
    data = archive.read_bytes()
    return requests.put(master.url + "/api/v1/upload", auth=("admin", PASSWORD), timeout=60,
                        params={"filename": name or archive.name,
                                "sha256": sha256 or hashlib.sha256(data).hexdigest()},
                        data=data)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    path = root / "farm.asc"
    generate_key(path)
    return {"farm": path}


@pytest.fixture(scope="module")
def master(tmp_path_factory, keys) -> Master:
    with standalone_master(tmp_path_factory.mktemp("pacman-repo"), repository={
            "formats": ["pacman"], "signing_key": str(keys["farm"]),
            "architectures": ["amd64", "arm64"]}) as m:
        yield m


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("definitions")
    return {
        "lib": build(definition(folder / "lib", "pm-lib", "1.0", arch="all")),
        "app": build(definition(folder / "app", "pm-app", "2.0",
                                depends='["pm-lib (>= 1.0)"]')),
        "app-arm": build(definition(folder / "app", "pm-app", "2.0",
                                    depends='["pm-lib (>= 1.0)"]'), "arm64"),
        "app-new": build(definition(folder / "app-new", "pm-app", "2.1",
                                    depends='["pm-lib (>= 1.0)"]', greeting="bonjour")),
    }


@pytest.fixture(scope="module")
def health(master) -> dict:
    return requests.get(master.url + "/api/v1/health", timeout=10).json()


def client(master: Master, health: dict, root: Path) -> PacmanClient:
    config = health["repository"]["formats"]["pacman"]
    key = root / "farm-key.gpg"
    root.mkdir(parents=True, exist_ok=True)
    key.write_bytes(requests.get(config["key_url"], timeout=10).content)
    return PacmanClient(root, config["snippet"], key, health["signing_key"])


def test_packages_satisfy_pacman_and_repo_add(packages, tmp_path):
    app = packages["app"]
    (tmp_path / "db").mkdir()
    query = ["pacman", "--root", str(tmp_path), "--dbpath", str(tmp_path / "db")]
    info = subprocess.run([*query, "-Qip", str(app)],
                          capture_output=True, text=True, check=True).stdout
    assert "pm-app" in info and "2.0-1" in info and "x86_64" in info
    assert "pm-lib>=1.0" in info
    listing = subprocess.run([*query, "-Qlp", str(app)],
                             capture_output=True, text=True, check=True).stdout
    assert f"pm-app {tmp_path}/usr/bin/pm-app\n" in listing
    assert "/usr/share/pm-app/data file" in listing
    owners = subprocess.run(["bsdtar", "-tvf", str(app)], capture_output=True, text=True,
                            check=True).stdout
    assert all(" root   root " in line for line in owners.splitlines()), owners
    repo = tmp_path / "repo"
    repo.mkdir()
    for p in packages.values():
        if p is not packages["app-new"]:
            shutil.copy(p, repo)
    result = subprocess.run(["repo-add", str(repo / "t.db.tar.gz"),
                             *sorted(str(p) for p in repo.glob("*.zst"))],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "ERROR" not in result.stderr, result.stderr


def test_packing_is_reproducible(tmp_path):
    path = definition(tmp_path / "d", "pm-repro", "1.0")
    first = build(path).read_bytes()
    assert build(path).read_bytes() == first


def test_pacman_syncs_installs_runs_and_upgrades(master, health, packages, tmp_path):
    for key in ("lib", "app", "app-arm"):
        assert upload(master, packages[key]).status_code == 201
    config = health["repository"]["formats"]["pacman"]
    assert "SigLevel = Required" in config["snippet"]
    pacman = client(master, health, tmp_path / "pacman")
    pacman.run("-Sy", "pm-app")
    program = pacman.root / "usr/bin/pm-app"
    out = subprocess.run([str(program)], capture_output=True, text=True, check=True).stdout
    assert out == "hello from pm-app 2.0\n"
    assert (pacman.root / "usr/share/pm-lib/data file").read_text() == "data\n"
    assert "pm-lib 1.0-1" in pacman.run("-Q").stdout
    # The arm64 one is in the aarch64 database only (checked there, not installed).
    arm = requests.get(config["db_url"].replace("$arch", "aarch64"), timeout=10).content
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(arm))) as tar:
        names = tar.getnames()
    assert "pm-app-2.0-1/desc" in names and "pm-lib-1.0-1/desc" in names
    # A newer version published is what -Syu installs.
    assert upload(master, packages["app-new"]).status_code == 201
    pacman.run("-Syu")
    out = subprocess.run([str(program)], capture_output=True, text=True, check=True).stdout
    assert out == "bonjour from pm-app 2.1\n"


def test_tampered_database_is_refused(master, health, packages, tmp_path):
    assert upload(master, packages["lib"]).status_code in (200, 201)
    config = health["repository"]["formats"]["pacman"]
    name = config["repo"]
    db_key = f"pacman/stable/main/x86_64/{name}.db"
    db_file = master.data_dir / "repo" / db_key
    original = db_file.read_bytes()
    # A well-formed database saying something else (a dependency dropped): no checksum or
    # size in it disagrees with anything; only the signature can tell.
    members = []
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(original))) as tar:
        for m in tar:
            data = tar.extractfile(m).read() if m.isfile() else None
            if data is not None and m.name.endswith("/desc"):
                data = data.replace(b"%DEPENDS%\npm-lib>=1.0\n\n", b"")
                m.size = len(data)
            members.append((m, data))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m, data in members:
            tar.addfile(m, io.BytesIO(data) if data is not None else None)
    tampered = gzip.compress(buf.getvalue())
    assert tampered != original
    pacman = client(master, health, tmp_path / "pacman")
    try:
        db_file.write_bytes(tampered)
        result = pacman.run("-Sy", check=False)
        assert result.returncode != 0
        assert "invalid or corrupted database (PGP signature)" in result.stderr, result.stderr
    finally:
        db_file.write_bytes(original)
    pacman.run("-Sy")  # the genuine database passes the same check


def _repack(archive: Path, folder: Path, change) -> Path:
    """``archive`` unpacked, changed by ``change(tree)`` and packed again as it was (the
    metadata members kept as they are)."""
    tree = folder / "tree"
    shutil.rmtree(folder, ignore_errors=True)
    tree.mkdir(parents=True)
    subprocess.run(["bsdtar", "-xpf", str(archive), "-C", str(tree)], check=True)
    change(tree)
    listing = subprocess.run(["bsdtar", "-tf", str(archive)], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    out = folder / archive.name
    tar = subprocess.run(["bsdtar", "-cnf", "-", "--uid", "0", "--gid", "0", "-C", str(tree),
                          *listing], capture_output=True, check=True).stdout
    out.write_bytes(subprocess.run(["zstd", "-c", "-q", "-"], input=tar, capture_output=True,
                                   check=True).stdout)
    return out


def test_refused_uploads_leave_the_repository_unchanged(master, packages, tmp_path):
    lib = packages["lib"]
    assert upload(master, lib).status_code in (200, 201)
    before = repo_files(master.data_dir)
    garbage = tmp_path / lib.name
    garbage.write_bytes(gzip.compress(b"not a package at all" * 100))
    def payload(tree: Path) -> None:
        (tree / "usr/share/pm-lib/data file").write_text("evil\n")
    def pkginfo_arch(tree: Path) -> None:
        p = tree / ".PKGINFO"
        p.write_text(p.read_text().replace("arch = any", "arch = x86_64"))
    cases = {
        "bad checksum": upload(master, lib, sha256="0" * 64),
        "not a pacman package": upload(master, garbage),
        "a deb name": upload(master, lib, name="pm-lib_1.0-1_all.deb"),
        "wrong name": upload(master, lib, name=lib.name.replace("pm-lib", "pm-other")),
        "wrong version": upload(master, lib, name=lib.name.replace("1.0-1", "1.1-1")),
        "wrong arch": upload(master, lib, name=lib.name.replace("-any.", "-x86_64.")),
        "payload against .MTREE": upload(master, _repack(lib, tmp_path / "p", payload)),
        ".PKGINFO against .MTREE": upload(master, _repack(lib, tmp_path / "i",
                                                          pkginfo_arch)),
    }
    for what, resp in cases.items():
        assert resp.status_code in (400, 422), (what, resp.status_code, resp.text)
    assert "MTREE" in cases["payload against .MTREE"].json()["error"]
    assert repo_files(master.data_dir) == before


def test_archives_are_served_through_the_repository_root(master, health, packages):
    assert upload(master, packages["lib"]).status_code in (200, 201)
    config = health["repository"]["formats"]["pacman"]
    root = config["url"].replace("$arch", "x86_64")
    resp = requests.get(root + packages["lib"].name, timeout=10)
    assert resp.status_code == 200 and resp.content == packages["lib"].read_bytes()
    assert requests.get(root + "pm-nothing-1.0-1-any.pkg.tar.zst",
                        timeout=10).status_code == 404

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
import re
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
from tests.integration.test_upload import check_archives_against_jobs
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
            "architectures": ["amd64", "arm64"], "suites": ["testing"],
            "keep_versions": 2}) as m:
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


def makepkg_buildinfo_keys() -> tuple[list[str], set[str]]:
    """The keys makepkg's own write_buildinfo writes, in its order (read from the installed
    makepkg), and those of them that are lists (written once per value, none when empty)."""
    script = Path("/usr/bin/makepkg").read_text()
    body = script[script.index("write_buildinfo() {"):]
    body = body[:body.index("\n}\n")]
    calls = re.findall(r'write_kv_pair "(\w+)"\s*(.*)', body)
    assert calls, "makepkg's write_buildinfo was not found"
    return [key for key, _ in calls], {key for key, value in calls if "[@]" in value}


def test_buildinfo_is_format_2_as_makepkg_writes_it(packages):
    app = packages["app"]
    raw = subprocess.run(["bsdtar", "-xOf", str(app), ".BUILDINFO"], capture_output=True,
                         check=True).stdout.decode()
    pairs = []
    for line in raw.splitlines():
        key, eq, value = line.partition(" = ")
        assert eq and key and "\n" not in value, f"not 'key = value': {line!r}"
        pairs.append((key, value))
    fields = dict(pairs)
    assert len(fields) == len(pairs), "a single-valued key given twice"
    keys, lists = makepkg_buildinfo_keys()
    # Every single-valued key makepkg writes, in makepkg's order; the lists (buildenv,
    # options, installed) are empty here, which makepkg writes as no line at all.
    assert [k for k, _ in pairs] == [k for k in keys if k not in lists]
    assert fields["format"] == "2"
    assert (fields["pkgname"], fields["pkgbase"]) == ("pm-app", "pm-app")
    assert (fields["pkgver"], fields["pkgarch"]) == ("2.0-1", "x86_64")
    assert re.fullmatch(r"[0-9a-f]{64}", fields["pkgbuild_sha256sum"])
    assert fields["builddate"] == SOURCE_DATE_EPOCH
    assert fields["packager"] == "pkgfarm tests <tests@example.org>"
    assert fields["buildtool"] == "pkgfarm" and fields["buildtoolver"]
    pkginfo = subprocess.run(["bsdtar", "-xOf", str(app), ".PKGINFO"], capture_output=True,
                             check=True, text=True).stdout
    assert f"pkgver = {fields['pkgver']}\n" in pkginfo  # the same package as .PKGINFO's


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


def db_entries(data: bytes) -> dict[str, dict[str, dict[str, list[str]]]]:
    """A pacman database (gzip-compressed tar) as folder -> member (desc, files) -> field ->
    values, read the way pacman reads an entry: %FIELD% lines, a value a line, a blank line
    ends the field."""
    entries: dict[str, dict[str, dict[str, list[str]]]] = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        for m in tar:
            if not m.isfile():
                continue
            folder, _, member = m.name.partition("/")
            fields: dict[str, list[str]] = {}
            key = None
            for line in tar.extractfile(m).read().decode().split("\n"):
                if key is None:
                    if line:
                        assert re.fullmatch(r"%[A-Z0-9]+%", line), (m.name, line)
                        assert line not in fields, (m.name, line)
                        key = line
                        fields[key] = []
                elif line:
                    fields[key].append(line)
                else:
                    key = None
            entries.setdefault(folder, {})[member] = fields
    return entries


#: What may differ between the farm's entry of an archive and repo-add's: the package's
#: signature. The farm signs every package it lists (SigLevel = Required) and carries the
#: signature in the entry; repo-add adds one only from a <package>.sig file beside the
#: archive, which the scratch copy has none of. Nothing else is left out: no time is
#: recorded in desc or files (BUILDDATE is the package's own, from .PKGINFO).
IGNORED_FIELDS = {"%PGPSIG%"}


def test_database_entries_equal_repo_adds(master, packages, tmp_path):
    """The same real archives, published by the farm and added by repo-add to a scratch
    database: every package's desc and files entries agree, field by field."""
    for key in ("lib", "app-new", "app-arm"):
        assert upload(master, packages[key]).status_code in (200, 201)
    base = master.data_dir / "repo" / "pacman" / "stable" / "main"
    for arch, keys in (("x86_64", ("lib", "app-new")), ("aarch64", ("lib", "app-arm"))):
        scratch = tmp_path / arch
        scratch.mkdir()
        archives = {}
        for key in keys:
            shutil.copy(packages[key], scratch)
            # the folder of an entry is name-version: the file name without -arch.pkg.tar.zst
            archives[packages[key].name.rsplit("-", 1)[0]] = packages[key].name
        result = subprocess.run(["repo-add", "-q", str(scratch / "t.db.tar.gz"),
                                 *sorted(str(p) for p in scratch.glob("*.zst"))],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        for ours, theirs in (("pkgfarm-stable.db", "t.db.tar.gz"),
                             ("pkgfarm-stable.files", "t.files.tar.gz")):
            farm = db_entries((base / arch / ours).read_bytes())
            added = db_entries((scratch / theirs).read_bytes())
            assert set(added) == set(archives), (arch, set(added))
            for folder, members in added.items():
                assert set(farm[folder]) == set(members), (arch, folder)
                for member, fields in members.items():
                    mine = {k: v for k, v in farm[folder][member].items()
                            if k not in IGNORED_FIELDS}
                    assert mine == {k: v for k, v in fields.items()
                                    if k not in IGNORED_FIELDS}, (arch, folder, member)
                    if member == "desc":
                        assert mine["%FILENAME%"] == [archives[folder]]
                        # the only difference: the farm carries the package's signature
                        assert "%PGPSIG%" in farm[folder][member]
                        assert "%PGPSIG%" not in fields
                    else:
                        assert mine["%FILES%"], (arch, folder)


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

    def mtree(old: bytes, new: bytes):
        def change(tree: Path) -> None:
            p = tree / ".MTREE"
            text = gzip.decompress(p.read_bytes())
            assert old in text, text
            p.write_bytes(gzip.compress(text.replace(old, new, 1), mtime=0))
        return change
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
        # .MTREE's own text malformed: a mode that is no octal number, an escape that is no
        # byte (each once an unhandled error: a 500)
        "a mode that is no number": upload(master, _repack(
            lib, tmp_path / "m", mtree(b" mode=777", b" mode=7z7"))),
        "an escape that is no byte": upload(master, _repack(
            lib, tmp_path / "e", mtree(b"./usr/bin/pm-lib ", b"./usr/bin/pm-lib\\777 "))),
    }
    for what, resp in cases.items():
        assert resp.status_code in (400, 422), (what, resp.status_code, resp.text)
    assert "MTREE" in cases["payload against .MTREE"].json()["error"]
    assert cases["a mode that is no number"].status_code == 422
    assert cases["a mode that is no number"].json()["error"] == (
        "usr/bin/pm-lib-share: .MTREE gives the mode '7z7', which is not an octal number")
    assert cases["an escape that is no byte"].status_code == 422
    assert "escape '\\\\777', which is no byte" in cases["an escape that is no byte"].json()[
        "error"]
    assert repo_files(master.data_dir) == before


def test_archives_are_served_through_the_repository_root(master, health, packages):
    assert upload(master, packages["lib"]).status_code in (200, 201)
    config = health["repository"]["formats"]["pacman"]
    root = config["url"].replace("$arch", "x86_64")
    resp = requests.get(root + packages["lib"].name, timeout=10)
    assert resp.status_code == 200 and resp.content == packages["lib"].read_bytes()
    assert requests.get(root + "pm-nothing-1.0-1-any.pkg.tar.zst",
                        timeout=10).status_code == 404


def test_a_pacman_package_must_be_its_jobs(master, packages, tmp_path):
    """A worker's package is checked against the job it is uploaded for: name, version,
    pkgrel, epoch and architecture."""
    check_archives_against_jobs(master, "pacman", packages["lib"], ("pm-lib", "1.0-1", "all"), {
        "another name": ("pm-other", "1.0-1", "all"),
        "another version": ("pm-lib", "1.1-1", "all"),
        "another pkgrel": ("pm-lib", "1.0-2", "all"),
        "an epoch the archive lacks": ("pm-lib", "1:1.0-1", "all"),
        "another architecture": ("pm-lib", "1.0-1", "amd64"),
    })
    check_archives_against_jobs(master, "pacman", packages["app"], ("pm-app", "2.0-1", "amd64"),
                                {"arm64 for x86_64": ("pm-app", "2.0-1", "arm64")})
    with_epoch = build(definition(tmp_path / "epoch", "pm-lib", "1:1.0", arch="all"))
    assert with_epoch.name == "pm-lib-1:1.0-1-any.pkg.tar.zst"
    check_archives_against_jobs(master, "pacman", with_epoch, ("pm-lib", "1:1.0-1", "all"), {
        "no epoch": ("pm-lib", "1.0-1", "all"), "another epoch": ("pm-lib", "2:1.0-1", "all")})


def db_folders(master: Master, suite: str = "stable", arch: str = "x86_64") -> set[str]:
    """The entries (name-version) of a suite's database for one architecture."""
    data = (master.data_dir / "repo" / "pacman" / suite / "main" / arch /
            f"pkgfarm-{suite}.db").read_bytes()
    return set(db_entries(data))


def pool_packages(master: Master, name: str) -> list[str]:
    return sorted(p.name for p in (master.data_dir / "repo/pacman/pool").rglob(f"{name}-*")
                  if not p.name.endswith(".sig"))


def test_retention_promotion_and_removal(master, health, tmp_path):
    """keep_versions (2) versions stay in the pool; a version promoted to testing is kept
    while testing serves it and a stock pacman syncs it from there; DELETE takes versions out
    of the pool, the databases and the package signatures beside them."""
    built = {v: build(definition(tmp_path / "defs" / v, "pm-kept", v, arch="all"))
             for v in ("1.0", "1.1", "1.2", "1.3")}
    for version in ("1.0", "1.1"):
        assert upload(master, built[version]).status_code == 201
    resp = master.api("POST", "/api/v1/packages/pm-kept/promote",
                      json={"version": "1.0-1", "from": "stable", "to": "testing",
                            "format": "pacman"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["promoted"] == [built["1.0"].name]
    assert "pm-kept-1.0-1" in db_folders(master, "testing")
    assert "pm-kept-1.1-1" in db_folders(master, "stable")
    # The testing database is signed and its package too: pacman syncs it with
    # SigLevel = Required and installs the promoted version.
    snippet = health["repository"]["formats"]["pacman"]["snippet"].replace(
        "pkgfarm-stable", "pkgfarm-testing").replace("/pacman/stable/", "/pacman/testing/")
    key = tmp_path / "farm-key.gpg"
    key.write_bytes(requests.get(master.url + "/repo/key.gpg", timeout=10).content)
    pacman = PacmanClient(tmp_path / "pacman", snippet, key, health["signing_key"])
    pacman.run("-Sy", "pm-kept")
    assert pacman.run("-Q", "pm-kept").stdout.strip() == "pm-kept 1.0-1"

    # Two newer versions in stable: 1.1 leaves the pool (keep_versions 2), 1.0 stays, since
    # testing serves it.
    for version in ("1.2", "1.3"):
        assert upload(master, built[version]).status_code == 201
    assert pool_packages(master, "pm-kept") == [built[v].name for v in ("1.0", "1.2", "1.3")]
    listed = master.api("GET", "/api/v1/packages/pm-kept").json()["versions"]
    assert [(v["version"], sorted(v["suites"])) for v in listed] == [
        ("1.3-1", ["stable"]), ("1.2-1", ["stable"]), ("1.0-1", ["stable", "testing"])]
    assert {f for f in db_folders(master) if f.startswith("pm-kept-")} == {"pm-kept-1.3-1"}
    # Each archive in the pool has its signature beside it; 1.1's left with it.
    pool = master.data_dir / "repo/pacman/pool/main/pm-kept"
    assert sorted(p.name for p in pool.glob("*.sig")) == [
        f"{built[v].name}.sig" for v in ("1.0", "1.2", "1.3")]

    # Removal of one version: the next newest takes its place in the database.
    wrong = master.api("DELETE", "/api/v1/packages/pm-kept",
                       params={"version": "1.3-1", "format": "rpm"})
    assert wrong.status_code == 400 and wrong.json()["field"] == "format"
    gone = master.api("DELETE", "/api/v1/packages/pm-kept",
                      params={"version": "1.3-1", "format": "pacman"})
    assert gone.status_code == 200 and gone.json()["removed"] == [built["1.3"].name]
    assert pool_packages(master, "pm-kept") == [built[v].name for v in ("1.0", "1.2")]
    assert {f for f in db_folders(master) if f.startswith("pm-kept-")} == {"pm-kept-1.2-1"}
    assert sorted(p.name for p in pool.glob("*.sig")) == [
        f"{built[v].name}.sig" for v in ("1.0", "1.2")]
    # And the rest, from every suite: nothing of it is left, and pacman sees it gone.
    gone = master.api("DELETE", "/api/v1/packages/pm-kept")
    assert sorted(gone.json()["removed"]) == [built[v].name for v in ("1.0", "1.2")]
    assert pool_packages(master, "pm-kept") == []
    assert not any(f.startswith("pm-kept-") for suite in ("stable", "testing")
                   for f in db_folders(master, suite))
    assert not list(pool.glob("*.sig"))
    assert master.api("DELETE", "/api/v1/packages/pm-kept").status_code == 404
    pacman.run("-Sy")
    assert pacman.run("-Ss", "pm-kept", check=False).stdout == ""


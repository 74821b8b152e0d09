"""The rpm repository as a stock dnf sees it: real .rpm files made by the worker's packer from
definitions, uploaded to a master that serves only rpm and signs repomd.xml, then installed by
``dnf --installroot --config`` over HTTP from /repo/ with ``repo_gpgcheck=1``.

An empty root provides nothing, not even ``/bin/sh`` (which rpm adds as a requirement of every
shell script): the farm builds that provider too, from Debian's statically linked busybox.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from common.definition import PackageDefinition, parse_definition
from master.formats.rpm import RPM_REPOSITORY
from tests.integration.farm import (
    PASSWORD,
    DnfClient,
    Master,
    repo_files,
    standalone_master,
)
from tests.integration.test_repository import generate_key
from tests.integration.test_upload import check_archives_against_jobs
from worker.build import build_definition

BUSYBOX = Path("/bin/busybox")


# -- building with the worker's packer ---------------------------------------------------------

def definition(tmp: Path, build: str, files: dict[str, bytes] | None = None,
               later: dict[str, Any] | None = None,
               **package: Any) -> tuple[PackageDefinition, Path]:
    """A parsed definition and its work folder; ``later`` adds package fields (an epoch in
    the version, a license)."""
    workdir = tmp / f"{package['name']}-{package['version']}-work"
    (workdir / "sources").mkdir(parents=True)
    for name, data in (files or {}).items():
        (workdir / "sources" / name).write_bytes(data)
    fields = {"release": "1", "architecture": "all",
              "description": f"{package['name']} for the tests\nMade by pkgfarm's tests.\n",
              "maintainer": "Test <test@example.org>", **package, **(later or {})}
    (workdir / "package.yaml").write_text(yaml.safe_dump({"package": fields, "build": build}))
    # The definition's time is the build's SOURCE_DATE_EPOCH: the same for every build here,
    # so that the same definition makes the same bytes whenever it is written.
    os.utime(workdir / "package.yaml", (1_700_000_000, 1_700_000_000))
    return parse_definition(workdir / "package.yaml", check_sources=False), workdir


def build_rpm(tmp: Path, build: str, arch: str = "amd64", files: dict[str, bytes] | None = None,
              later: dict[str, Any] | None = None, **package: Any) -> Path:
    defn, workdir = definition(tmp, build, files, later, **package)
    with open(tmp / f"{defn.name}-{defn.version}.log", "w") as out:
        result = build_definition(defn, arch, workdir, out, lambda _: None, timeout=120,
                                  install_deps=False, fmt="rpm")
    built = result.archives[0]
    kept = tmp / "rpms" / built.name
    kept.parent.mkdir(exist_ok=True)
    shutil.copyfile(built, kept)
    return kept


def build_sh(tmp: Path) -> Path:
    """/bin/sh for an empty root: Debian's static busybox."""
    return build_rpm(tmp, 'install -D -m 0755 busybox "$DESTDIR/bin/sh"\n',
                     files={"busybox": BUSYBOX.read_bytes()}, name="farm-sh", version="1.0",
                     architecture="any")


def build_hello(tmp: Path, version: str, **package: Any) -> Path:
    script = f"#!/bin/sh\necho 'hello from {version}'\n".encode()
    return build_rpm(tmp, 'install -D -m 0755 hello "$DESTDIR/usr/bin/hello"\n',
                     files={"hello": script}, name="farm-hello", version=version, **package)


def query(rpm_file: Path, fmt: str) -> str:
    return subprocess.run(["rpm", "-qp", "--nosignature", "--qf", fmt, str(rpm_file)],
                          capture_output=True, text=True, check=True).stdout


# -- the master and dnf ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def key(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "farm.asc"
    generate_key(path)
    return path


@pytest.fixture(scope="module")
def master(tmp_path_factory, key) -> Master:
    with standalone_master(tmp_path_factory.mktemp("rpm-repo"), repository={
            "formats": ["rpm"], "signing_key": str(key), "suites": ["testing"]}) as m:
        yield m


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("rpm-builds")
    return {"sh": build_sh(tmp), "hello1": build_hello(tmp, "1.0"),
            "hello2": build_hello(tmp, "2.0")}


def upload(master: Master, path: Path, filename: str | None = None,
           sha256: str | None = None) -> requests.Response:
    data = path.read_bytes()
    return requests.put(master.url + "/api/v1/upload", auth=("admin", PASSWORD), timeout=120,
                        params={"filename": filename or path.name,
                                "sha256": sha256 or hashlib.sha256(data).hexdigest()},
                        data=data)


def health_rpm(master: Master) -> dict[str, str]:
    config: dict[str, str] = requests.get(master.url + "/api/v1/health", timeout=10).json()[
        "repository"]["formats"]["rpm"]
    return config


def repodata(master: Master, suite: str = "stable") -> Path:
    return master.data_dir / "repo" / "rpm" / suite / "repodata"


# -- tests -------------------------------------------------------------------------------------

def test_the_packer_makes_a_real_rpm(built) -> None:
    sh, hello = built["sh"], built["hello1"]
    assert sh.name == "farm-sh-1.0-1.x86_64.rpm"
    assert hello.name == "farm-hello-1.0-1.noarch.rpm"
    assert query(hello, "%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{SUMMARY} %{LICENSE}") == (
        "farm-hello 1.0 1 noarch farm-hello for the tests LicenseRef-not-stated")
    listing = query(hello, "[%{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEMODES:perms} "
                           "%{FILENAMES}\n]").splitlines()
    assert listing == ["root:root drwxr-xr-x /usr", "root:root drwxr-xr-x /usr/bin",
                       "root:root -rwxr-xr-x /usr/bin/hello"]
    # rpm's own requirement of a shell script, kept; and the provider of it.
    assert "/bin/sh" in query(hello, "[%{REQUIRENAME}\n]").splitlines()
    assert "/bin/sh" in query(sh, "[%{FILENAMES}\n]").splitlines()
    assert subprocess.run(["rpmkeys", "--checksig", "--nosignature", str(hello)],
                          capture_output=True).returncode == 0


def test_builds_are_reproducible_and_cross_arch(tmp_path) -> None:
    first = build_hello(tmp_path / "a", "1.0")
    second = build_hello(tmp_path / "b", "1.0")
    assert first.read_bytes() == second.read_bytes()
    arm = build_rpm(tmp_path / "c", 'install -D -m 0644 f "$DESTDIR/usr/share/x/f"\n',
                    arch="arm64", files={"f": b"x\n"}, name="farm-arm", version="1",
                    architecture="any")
    assert arm.name == "farm-arm-1-1.aarch64.rpm"
    assert query(arm, "%{ARCH}") == "aarch64"


def test_relations_epoch_and_odd_file_names(tmp_path) -> None:
    path = build_rpm(
        tmp_path, 'mkdir -p "$DESTDIR/usr/share/odd"\n'
        'echo x > "$DESTDIR/usr/share/odd/[weird] 100% a*b?.txt"\n'
        'ln -s "[weird] 100% a*b?.txt" "$DESTDIR/usr/share/odd/link"\n',
        name="farm-rel", version="2.0~rc1", release="2",
        later={"version": "3:2.0~rc1", "license": "MIT"},
        description="Relations 100% %{name}\nBody with %{macro} and %%.\n",
        depends=["farm-sh (>= 1.0)", "mta | farm-hello (>> 0.9)"], recommends=["extra"],
        conflicts=["old-thing (<< 2)"], replaces=["old-thing (<< 2)", "files-only"],
        provides=["virtual-thing"])
    assert path.name == "farm-rel-2.0~rc1-2.noarch.rpm"
    license = "MIT"
    assert query(path, "%{EPOCH}:%{VERSION}-%{RELEASE} %{SUMMARY} %{LICENSE}") == (
        f"3:2.0~rc1-2 Relations 100% %{{name}} {license}")
    requires = query(path, "[%{REQUIRENEVRS}\n]").splitlines()
    assert "farm-sh >= 1.0" in requires
    assert "(mta or farm-hello > 0.9)" in requires
    assert query(path, "[%{RECOMMENDNEVRS}\n]") == "extra\n"
    assert query(path, "[%{CONFLICTNEVRS}\n]") == "old-thing < 2\n"
    # replaces + conflicts is Debian's "takes its place": Obsoletes; files-only is not recorded
    assert query(path, "[%{OBSOLETENEVRS}\n]") == "old-thing < 2\n"
    assert "virtual-thing" in query(path, "[%{PROVIDENEVRS}\n]")
    files = query(path, "[%{FILENAMES}\n]").splitlines()
    assert "/usr/share/odd/[weird] 100% a*b?.txt" in files
    assert "/usr/share/odd/link" in files
    assert "Body with %{macro} and %%." in query(path, "%{DESCRIPTION}")


def test_dnf_installs_from_the_signed_repository_and_upgrades(master, built, tmp_path):
    for name in ("sh", "hello1"):
        assert upload(master, built[name]).status_code == 201
    config = health_rpm(master)
    assert config["url"] == master.url + "/repo/rpm/stable/"
    assert "repo_gpgcheck=1" in config["snippet"]
    key = requests.get(config["key_url"], timeout=10)
    assert key.status_code == 200 and b"BEGIN PGP PUBLIC KEY BLOCK" in key.content
    assert (repodata(master) / "repomd.xml.asc").is_file()

    dnf = DnfClient(tmp_path / "dnf", config["snippet"])
    dnf.run("install", "farm-hello")
    # the requirement /bin/sh was resolved from the farm's own provider
    assert dnf.program("/usr/bin/hello") == "hello from 1.0\n"
    assert (dnf.root / "bin/sh").is_file()

    assert upload(master, built["hello2"]).status_code == 201
    dnf.run("upgrade", "--refresh")
    assert dnf.program("/usr/bin/hello") == "hello from 2.0\n"
    installed = subprocess.run(["rpm", f"--root={dnf.root}", "-q", "farm-hello"],
                               capture_output=True, text=True).stdout
    assert installed.strip() == "farm-hello-2.0-1.noarch"


def test_the_metadata_is_what_createrepo_c_writes(master, built, tmp_path):
    """The farm's primary/filelists/other hold, package for package, what a full createrepo_c
    run over the same files writes (but the file times, which are the upload's)."""
    assert upload(master, built["hello1"]).status_code in (200, 201)  # older: not listed
    for name in ("sh", "hello2"):
        assert upload(master, built[name]).status_code in (200, 201)
    repo = tmp_path / "cr"
    (repo / "packages").mkdir(parents=True)
    for name in ("sh", "hello2"):
        shutil.copyfile(built[name], repo / "packages" / built[name].name)
    subprocess.run(["createrepo_c", "--no-database", "--simple-md-filenames", str(repo)],
                   check=True, capture_output=True)
    repomd = (repodata(master) / "repomd.xml").read_text()
    for kind in ("primary", "filelists", "other"):
        href = re.search(rf'<location href="(repodata/[0-9a-f]{{64}}-{kind}\.xml\.gz)"',
                         repomd)[1]
        ours = gzip.decompress((repodata(master).parent / href).read_bytes()).decode()
        theirs = gzip.decompress((repo / "repodata" / f"{kind}.xml.gz").read_bytes()).decode()
        ours, theirs = (re.sub(r'<time file="\d+"', "<time", t) for t in (ours, theirs))
        # the same head and tail, and the same elements (the order is the farm's groups')
        assert ours.split("<package", 1)[0] == theirs.split("<package", 1)[0], kind
        assert ours.rsplit("</package>", 1)[1] == theirs.rsplit("</package>", 1)[1], kind
        elements = [sorted(re.findall(r"<package[ >].*?</package>\n", t, re.S))
                    for t in (ours, theirs)]
        assert len(elements[0]) == 2 and elements[0] == elements[1], kind


def test_dnf_refuses_a_tampered_repomd(master, built, tmp_path):
    """Someone with the web server's files changes primary and makes every checksum in
    repomd.xml consistent again: only the signature can tell, and dnf refuses."""
    assert upload(master, built["sh"]).status_code in (200, 201)
    config = health_rpm(master)
    # First a dnf that trusts the repository as it is, to show the refusal is the tampering's.
    DnfClient(tmp_path / "good", config["snippet"]).run("makecache")
    folder = repodata(master)
    saved = tmp_path / "saved"
    shutil.copytree(folder, saved)
    try:
        repomd = (folder / "repomd.xml").read_text()
        href = re.search(r'<location href="repodata/([0-9a-f]{64}-primary\.xml\.gz)"',
                         repomd)[1]
        old = folder / href
        plain = gzip.decompress(old.read_bytes())
        forged_plain = plain.replace(b"farm-sh for the tests", b"farm-sh, now evil")
        assert forged_plain != plain
        forged = gzip.compress(forged_plain, mtime=0)
        digest = hashlib.sha256(forged).hexdigest()
        (folder / f"{digest}-primary.xml.gz").write_bytes(forged)
        old_sha, old_open = href.split("-")[0], hashlib.sha256(plain).hexdigest()
        repomd = (repomd.replace(old_sha, digest)
                  .replace(old_open, hashlib.sha256(forged_plain).hexdigest())
                  .replace(f"<size>{len(old.read_bytes())}</size>", f"<size>{len(forged)}</size>")
                  .replace(f"<open-size>{len(plain)}</open-size>",
                           f"<open-size>{len(forged_plain)}</open-size>"))
        (folder / "repomd.xml").write_text(repomd)
        bad = DnfClient(tmp_path / "bad", config["snippet"])
        result = bad.run("makecache", check=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert re.search(r"signature|GPG|gpg", output), output
        # The forgery is consistent but for the signature: without repo_gpgcheck dnf takes it.
        lax = DnfClient(tmp_path / "lax", config["snippet"].replace("repo_gpgcheck=1",
                                                              "repo_gpgcheck=0"))
        lax.run("makecache")
        listed = lax.run("repoquery", "--qf", "%{summary}", "farm-sh").stdout
        assert "farm-sh, now evil" in listed
    finally:
        shutil.rmtree(folder)
        shutil.copytree(saved, folder)


def _refusals(built: dict[str, Path], tmp: Path) -> list[tuple[str, Path, str, str | None]]:
    hello = built["hello1"]
    truncated = tmp / hello.name
    data = hello.read_bytes()
    truncated.write_bytes(data[:-200])
    flipped = tmp / "flipped" / hello.name
    flipped.parent.mkdir()
    body = bytearray(data)
    body[-100] ^= 0xFF
    flipped.write_bytes(bytes(body))
    garbage = tmp / "farm-junk-1.0-1.noarch.rpm"
    garbage.write_bytes(b"\xed\xab\xee\xdb" + os.urandom(4000))
    deb = tmp / "farm-deb-1.0-1.noarch.rpm"
    subprocess.run(["dpkg-deb", "--version"], check=True, capture_output=True)
    (tmp / "debroot/DEBIAN").mkdir(parents=True)
    (tmp / "debroot/DEBIAN/control").write_text(
        "Package: farm-deb\nVersion: 1.0-1\nArchitecture: all\nMaintainer: T <t@e.org>\n"
        "Description: x\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tmp / "debroot"),
                    str(deb)], check=True, capture_output=True)
    return [
        ("bad checksum", hello, hello.name, "0" * 64),
        ("truncated", truncated, hello.name, None),
        ("payload altered", flipped, hello.name, None),
        ("not an rpm", garbage, garbage.name, None),
        ("a .deb", deb, deb.name, None),
        ("other name", hello, "farm-other-1.0-1.noarch.rpm", None),
        ("other version", hello, "farm-hello-1.1-1.noarch.rpm", None),
        ("other release", hello, "farm-hello-1.0-2.noarch.rpm", None),
        ("other arch", hello, "farm-hello-1.0-1.x86_64.rpm", None),
        ("source rpm name", hello, "farm-hello-1.0-1.src.rpm", None),
    ]


def test_refused_uploads_leave_the_repository_unchanged(master, built, tmp_path):
    assert upload(master, built["sh"]).status_code in (200, 201)
    before = repo_files(master.data_dir)
    for what, path, filename, sha in _refusals(built, tmp_path):
        resp = upload(master, path, filename=filename, sha256=sha)
        assert resp.status_code in (400, 422), (what, resp.status_code, resp.text)
        assert repo_files(master.data_dir) == before, what


def test_an_rpm_source_package_is_refused(master, tmp_path):
    spec = tmp_path / "s.spec"
    spec.write_text("Name: farm-src\nVersion: 1\nRelease: 1\nSummary: s\nLicense: MIT\n"
                    "%description\ns\n%files\n")
    subprocess.run(["rpmbuild", "-bs", "--define", f"_topdir {tmp_path / 'top'}",
                    str(spec)], check=True, capture_output=True,
                   env={**os.environ, "HOME": str(tmp_path)})
    srpm = next((tmp_path / "top" / "SRPMS").glob("*.src.rpm"))
    before = repo_files(master.data_dir)
    # named as a source rpm, and disguised as a binary one
    for filename in (srpm.name, "farm-src-1-1.noarch.rpm"):
        resp = upload(master, srpm, filename=filename)
        assert resp.status_code in (400, 422), resp.text
    assert "source rpm" in upload(master, srpm, filename="farm-src-1-1.noarch.rpm").text
    assert repo_files(master.data_dir) == before


def test_archive_names_through_a_suite_redirect_to_the_pool(master, built):
    assert upload(master, built["sh"]).status_code in (200, 201)
    name = built["sh"].name
    assert RPM_REPOSITORY.archive_alias(f"rpm/stable/packages/{name}") == ("stable", name)
    for other in ("rpm/pool/packages/" + name, f"rpm/stable/packages/x/{name}",
                  "rpm/stable/packages/notes.txt", f"dists/stable/packages/{name}"):
        assert RPM_REPOSITORY.archive_alias(other) is None, other
    resp = requests.get(f"{master.url}/repo/rpm/stable/packages/{name}", timeout=10,
                        allow_redirects=False)
    assert resp.status_code == 302
    assert resp.headers["Location"].endswith(f"/repo/rpm/pool/main/f/farm-sh/{name}")
    assert requests.get(f"{master.url}/repo/rpm/stable/packages/{name}",
                        timeout=10).content == built["sh"].read_bytes()
    # a suite that does not hold it
    assert requests.get(f"{master.url}/repo/rpm/testing/packages/{name}",
                        timeout=10).status_code == 404


def test_promotion_shares_the_pool_file(master, built, tmp_path):
    assert upload(master, built["sh"]).status_code in (200, 201)
    resp = master.api("POST", "/api/v1/packages/farm-sh/promote",
                      json={"version": "1.0-1", "from": "stable", "to": "testing"})
    assert resp.status_code in (200, 201), resp.text
    repomd = (repodata(master, "testing") / "repomd.xml").read_text()
    href = re.search(r'<location href="(repodata/[0-9a-f]{64}-primary\.xml\.gz)"', repomd)[1]
    primary = gzip.decompress((repodata(master, "testing").parent / href).read_bytes())
    assert f'<location href="packages/{built["sh"].name}"/>'.encode() in primary
    assert requests.get(f"{master.url}/repo/rpm/testing/packages/{built['sh'].name}",
                        timeout=10).content == built["sh"].read_bytes()


def test_the_worker_check_finds_the_archive_in_the_index(master, built):
    from worker.formats.rpm import RPM_BUILDER

    assert upload(master, built["sh"]).status_code in (200, 201)

    class Client:
        def get_text(self, path: str) -> str:
            return requests.get(master.url + path, timeout=10).text

        def get_bytes(self, path: str) -> bytes:
            return requests.get(master.url + path, timeout=10).content

    repo = requests.get(master.url + "/api/v1/health", timeout=10).json()["repository"]
    assert RPM_BUILDER.index_lists(Client(), repo, built["sh"].name)
    assert not RPM_BUILDER.index_lists(Client(), repo, "farm-nothing-1-1.noarch.rpm")




def test_an_rpm_must_be_its_jobs_package(master, built, tmp_path):
    """A worker's rpm is checked against the job it is uploaded for: name, version, release,
    epoch (read from the header: the file name has none) and architecture."""
    with_epoch = build_hello(tmp_path, "1.0", later={"version": "2:1.0"})
    assert with_epoch.name == built["hello1"].name  # the same file name, another epoch
    others = {
        "another name": ("farm-other", "1.0-1", "all"),
        "another version": ("farm-hello", "1.1-1", "all"),
        "another release": ("farm-hello", "1.0-2", "all"),
        "an epoch the archive lacks": ("farm-hello", "1:1.0-1", "all"),
        "another architecture": ("farm-hello", "1.0-1", "amd64"),
    }
    check_archives_against_jobs(master, "rpm", built["hello1"], ("farm-hello", "1.0-1", "all"),
                                others)
    check_archives_against_jobs(master, "rpm", with_epoch, ("farm-hello", "2:1.0-1", "all"), {
        "no epoch": ("farm-hello", "1.0-1", "all"),
        "another epoch": ("farm-hello", "1:1.0-1", "all")})


def primary_versions(master: Master, suite: str = "stable") -> set[tuple[str, str]]:
    """(name, version-release) of every package the suite's primary.xml lists."""
    repomd = (repodata(master, suite) / "repomd.xml").read_text()
    href = re.search(r'<location href="(repodata/[0-9a-f]{64}-primary\.xml\.gz)"', repomd)[1]
    primary = gzip.decompress((repodata(master, suite).parent / href).read_bytes()).decode()
    found = re.findall(r'<name>([^<]+)</name>.*?<version epoch="\d+" ver="([^"]+)" '
                       r'rel="([^"]+)"/>', primary, re.S)
    return {(name, f"{ver}-{rel}") for name, ver, rel in found}


def pool_rpms(master: Master, name: str) -> list[str]:
    return sorted(p.name for p in (master.data_dir / "repo/rpm/pool").rglob(f"{name}-*.rpm"))


def test_retention_and_removal(master, tmp_path):
    """keep_versions (3) versions of an rpm stay in the pool, older ones go from the pool and
    the metadata; DELETE takes a version, then the rest, out of both."""
    script = b"#!/bin/sh\necho kept\n"
    versions = ["1.0", "1.1", "1.2", "1.3"]
    for version in versions:
        path = build_rpm(tmp_path / version, 'install -D -m 0644 f "$DESTDIR/usr/share/k/f"\n',
                         files={"f": script}, name="farm-kept", version=version)
        assert upload(master, path).status_code == 201
    assert pool_rpms(master, "farm-kept") == [f"farm-kept-{v}-1.noarch.rpm"
                                              for v in versions[1:]]
    listed = master.api("GET", "/api/v1/packages/farm-kept").json()["versions"]
    assert [v["version"] for v in listed] == ["1.3-1", "1.2-1", "1.1-1"]
    assert {v for n, v in primary_versions(master) if n == "farm-kept"} == {"1.3-1"}

    # Removal: one version (the one the metadata lists: the next newest takes its place).
    wrong = master.api("DELETE", "/api/v1/packages/farm-kept",
                       params={"version": "1.3-1", "format": "deb"})
    assert wrong.status_code == 400 and wrong.json()["field"] == "format"
    gone = master.api("DELETE", "/api/v1/packages/farm-kept",
                      params={"version": "1.3-1", "format": "rpm"})
    assert gone.status_code == 200, gone.text
    assert gone.json()["removed"] == ["farm-kept-1.3-1.noarch.rpm"]
    assert pool_rpms(master, "farm-kept") == ["farm-kept-1.1-1.noarch.rpm",
                                              "farm-kept-1.2-1.noarch.rpm"]
    assert {v for n, v in primary_versions(master) if n == "farm-kept"} == {"1.2-1"}
    # The rest: nothing of it is left in the pool or the metadata, and dnf agrees.
    gone = master.api("DELETE", "/api/v1/packages/farm-kept")
    assert sorted(gone.json()["removed"]) == ["farm-kept-1.1-1.noarch.rpm",
                                              "farm-kept-1.2-1.noarch.rpm"]
    assert pool_rpms(master, "farm-kept") == []
    assert not any(n == "farm-kept" for n, _ in primary_versions(master))
    assert master.api("DELETE", "/api/v1/packages/farm-kept").status_code == 404
    dnf = DnfClient(tmp_path / "dnf", health_rpm(master)["snippet"])
    dnf.run("makecache")
    assert "farm-kept" not in dnf.run("repoquery", "--qf", "%{name}\n", check=False).stdout


"""The repository as apt sees it: signed, by-hash, several suites, retention, and the same
entries apt-ftparchive writes for the same pool."""

from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import lzma
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import requests

from tests.integration.farm import (
    BIN,
    PASSWORD,
    AptClient,
    Master,
    make_deb,
    parse_packages,
    standalone_master,
    stop_gpg_agents,
)


def generate_key(path: Path) -> None:
    result = subprocess.run([str(BIN / "master"), "key-generate", "--output", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"signing_key: {path}" in result.stdout


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    keys = {"farm": root / "farm.asc", "other": root / "other.asc"}
    for path in keys.values():
        generate_key(path)
    return keys


@pytest.fixture(scope="module")
def master(tmp_path_factory, keys) -> Master:
    with standalone_master(tmp_path_factory.mktemp("repo"), repository={
            "signing_key": str(keys["farm"]), "suites": ["testing"], "keep_versions": 2}) as m:
        yield m


def upload(master: Master, deb: Path) -> requests.Response:
    return requests.put(master.url + "/api/v1/upload", auth=("admin", PASSWORD), timeout=60,
                        params={"filename": deb.name,
                                "sha256": hashlib.sha256(deb.read_bytes()).hexdigest()},
                        data=deb.read_bytes())


def signed_apt(master: Master, root: Path, key: bytes, suite: str = "stable") -> AptClient:
    root.mkdir(parents=True, exist_ok=True)
    keyring = root / "farm-key.gpg"
    keyring.write_bytes(key)
    return AptClient(root, f"deb [signed-by={keyring}] {master.url}/repo {suite} main")


def test_signed_repository_is_accepted_and_its_key_published(master, keys, tmp_path):
    deb = make_deb(tmp_path, "signed-pkg", "1.0-1")
    assert upload(master, deb).status_code == 201
    health = requests.get(master.url + "/api/v1/health", timeout=10).json()
    assert len(health["signing_key"]) == 40
    key = requests.get(master.url + "/repo/key.gpg", timeout=10)
    assert key.status_code == 200
    listing = subprocess.run(["gpg", "--show-keys", "--with-colons"], input=key.content,
                             capture_output=True)
    assert f"fpr:::::::::{health['signing_key']}:".encode() in listing.stdout
    for name in ("InRelease", "Release.gpg", "Release"):
        assert requests.get(f"{master.url}/repo/dists/stable/{name}", timeout=10).ok
    apt = signed_apt(master, tmp_path / "apt", key.content)
    apt.update()
    assert apt.download("signed-pkg").read_bytes() == deb.read_bytes()


def test_apt_refuses_a_wrong_key(master, keys, tmp_path):
    other = subprocess.run(["gpg", "--dearmor"], input=_public_of(keys["other"], tmp_path),
                           capture_output=True, check=True).stdout
    apt = signed_apt(master, tmp_path / "apt", other)
    result = apt.run("update", check=False)
    output = result.stdout + result.stderr
    assert "NO_PUBKEY" in output or "not signed" in output or "couldn't be verified" in output
    assert apt.run("download", "signed-pkg", check=False).returncode != 0


def test_apt_refuses_a_tampered_packages_file(master, tmp_path):
    key = requests.get(master.url + "/repo/key.gpg", timeout=10).content
    deb = make_deb(tmp_path, "tamper-target", "1.0-1")
    assert upload(master, deb).status_code == 201
    # Someone with access to the web server's files edits the index, not the signature.
    copy = tmp_path / "served"
    shutil.copytree(master.data_dir / "repo", copy)
    try:
        base = master.data_dir / "repo" / "dists" / "stable" / "main" / "binary-amd64"
        for name in ("Packages", "Packages.gz", "Packages.xz"):
            (base / name).unlink()
        (base / "Packages").write_text(
            (copy / "dists/stable/main/binary-amd64/Packages").read_text()
            .replace("Version: 1.0-1", "Version: 9.9-1"))
        for by_hash in (base / "by-hash" / "SHA256").iterdir():
            by_hash.write_bytes(b"tampered\n")
        apt = signed_apt(master, tmp_path / "apt", key)
        result = apt.run("update", check=False)
        output = result.stdout + result.stderr
        assert "Hash Sum mismatch" in output or "unexpected size" in output, output
        shown = apt.cache("show", "tamper-target", check=False)
        assert shown.returncode != 0 and "9.9-1" not in shown.stdout, shown.stdout
    finally:
        shutil.rmtree(master.data_dir / "repo")
        shutil.copytree(copy, master.data_dir / "repo")


#: Release's checksum sections and the hash each names.
RELEASE_HASHES = {"MD5Sum": "md5", "SHA1": "sha1", "SHA256": "sha256"}


def forge_suite(dists: Path, folder: str, forged_plain: bytes) -> None:
    """Replace ``folder``'s Packages (and .gz, .xz, by-hash copies) with ``forged_plain`` and
    make Release list their new checksums and sizes: consistent to the last byte, except
    that the old signatures stay (Release.gpg as it was; InRelease's body rewritten under
    its old signature block)."""
    base = dists / folder
    forged = {"Packages": forged_plain,
              "Packages.gz": gzip.compress(forged_plain, mtime=0),
              "Packages.xz": lzma.compress(forged_plain, check=lzma.CHECK_CRC32)}
    for name, data in forged.items():
        (base / name).write_bytes(data)
        (base / "by-hash" / "SHA256" / hashlib.sha256(data).hexdigest()).write_bytes(data)
    lines, section, changed = [], None, 0
    for line in (dists / "Release").read_text().splitlines():
        if not line.startswith(" "):
            section = line.rstrip(":") if line.endswith(":") else None
        elif section in RELEASE_HASHES:
            _, _, path = line.split()
            if path.startswith(f"{folder}/") and path[len(folder) + 1:] in forged:
                data = forged[path[len(folder) + 1:]]
                line = (f" {hashlib.new(RELEASE_HASHES[section], data).hexdigest()} "
                        f"{len(data):>8} {path}")
                changed += 1
        lines.append(line)
    assert changed == 3 * len(RELEASE_HASHES), changed
    release = "\n".join(lines) + "\n"
    (dists / "Release").write_text(release)
    signed = (dists / "InRelease").read_text()
    head, rest = signed.split("\n\n", 1)  # the armor header, then the signed text
    signature = rest[rest.index("-----BEGIN PGP SIGNATURE-----"):]
    (dists / "InRelease").write_text(f"{head}\n\n{release}{signature}")


def test_apt_refuses_a_consistent_forgery_by_its_signature(master, tmp_path):
    """Packages forged and Release's checksums and sizes made to match it: nothing but the
    signature can tell. apt with the farm's key refuses it for the signature (BADSIG); the
    same apt trusting the source without a signature check takes the forgery, so the
    signature is what caught it."""
    key = requests.get(master.url + "/repo/key.gpg", timeout=10).content
    deb = make_deb(tmp_path, "forged-target", "1.0-1")
    assert upload(master, deb).status_code == 201
    repo = master.data_dir / "repo"
    copy = tmp_path / "served"
    shutil.copytree(repo, copy)
    dists = repo / "dists" / "stable"
    try:
        plain = (dists / "main/binary-amd64/Packages").read_bytes()
        forged = plain.replace(b"Package: forged-target\nVersion: 1.0-1",
                               b"Package: forged-target\nVersion: 9.9-1")
        assert forged != plain
        forge_suite(dists, "main/binary-amd64", forged)
        assert (dists / "InRelease").read_text() != (copy / "dists/stable/InRelease").read_text()
        # Release.gpg (untouched) and InRelease both verify no more, for the signature only.
        for signed in ("InRelease", "Release.gpg"):
            args = [str(dists / signed)] + ([str(dists / "Release")]
                                            if signed == "Release.gpg" else [])
            keyring = tmp_path / "keyring.gpg"
            keyring.write_bytes(key)
            check = subprocess.run(["gpgv", "--keyring", str(keyring), *args],
                                   capture_output=True, text=True)
            assert check.returncode != 0 and "BAD signature" in check.stderr, check.stderr

        apt = signed_apt(master, tmp_path / "apt", key)
        result = apt.run("update", check=False)
        output = result.stdout + result.stderr
        assert "BADSIG" in output and "The following signatures were invalid" in output, output
        assert "Hash Sum mismatch" not in output and "unexpected size" not in output, output
        shown = apt.cache("show", "forged-target", check=False)
        assert shown.returncode != 0 and "9.9-1" not in shown.stdout, shown.stdout

        # The same apt and key with the signature's verdict set aside ([trusted=yes]): it
        # still says the signature is bad, as a warning, and takes the forgery, which passes
        # every other check (no hash or size complaint, no error).
        keyring = tmp_path / "lax-key.gpg"
        keyring.write_bytes(key)
        lax = AptClient(tmp_path / "lax", f"deb [signed-by={keyring} trusted=yes] "
                                          f"{master.url}/repo stable main")
        result = lax.run("update")
        complaints = [line for line in (result.stdout + result.stderr).splitlines()
                      if line.startswith(("W:", "E:", "Err:"))]
        assert complaints and all(line.startswith("W: GPG error") and "BADSIG" in line
                                  for line in complaints), complaints
        shown = lax.cache("show", "forged-target").stdout
        assert "Version: 9.9-1" in shown, shown
    finally:
        shutil.rmtree(repo)
        shutil.copytree(copy, repo)
    signed_apt(master, tmp_path / "apt-again", key).update()  # the genuine files pass


def _public_of(secret: Path, tmp_path: Path) -> bytes:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700, exist_ok=True)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--import", str(secret)],
                   capture_output=True, check=True)
    public = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--armor", "--export"],
                            capture_output=True, check=True).stdout
    stop_gpg_agents(home)
    return public


def test_polling_apt_never_sees_a_mismatch_while_50_uploads_land(master, tmp_path):
    key = requests.get(master.url + "/repo/key.gpg", timeout=10).content
    apt = signed_apt(master, tmp_path / "apt", key)
    debs = [make_deb(tmp_path, f"busy-{i:02d}", "1.0-1") for i in range(50)]
    stop = threading.Event()
    problems: list[str] = []
    rounds = 0

    def poll() -> None:
        nonlocal rounds
        while not stop.is_set() and rounds < 200:
            result = apt.run("update", check=False)
            rounds += 1
            bad = [line for line in (result.stdout + result.stderr).splitlines()
                   if line.startswith(("E:", "W:", "Err:"))]
            problems.extend(bad)

    poller = threading.Thread(target=poll)
    poller.start()
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda d: upload(master, d).status_code, debs))
    stop.set()
    poller.join(timeout=120)
    assert statuses == [201] * 50
    assert rounds >= 2
    assert problems == []
    apt.update()
    listed = {s["Package"] for s in parse_packages(master.index("amd64"))}
    assert {f"busy-{i:02d}" for i in range(50)} <= listed


def test_promotion_and_retention(master, tmp_path):
    for version in ("1.0-1", "1.1-1", "1.2-1", "1.3-1"):
        assert upload(master, make_deb(tmp_path / version, "kept", version)).status_code == 201
    # keep_versions is 2: the pool and the API keep 1.3 and 1.2 only.
    versions = requests.get(master.url + "/api/v1/packages/kept", auth=("reader", PASSWORD),
                            timeout=10).json()["versions"]
    assert [v["version"] for v in versions] == ["1.3-1", "1.2-1"]
    pool = sorted(p.name for p in (master.data_dir / "repo/pool").rglob("kept_*"))
    assert pool == ["kept_1.2-1_all.deb", "kept_1.3-1_all.deb"]

    # Promote 1.2 to testing: the same pool file, now served by two suites.
    resp = requests.post(master.url + "/api/v1/packages/kept/promote",
                         auth=("admin", PASSWORD), timeout=30,
                         json={"version": "1.2-1", "from": "stable", "to": "testing"})
    assert resp.status_code == 200, resp.text
    testing = requests.get(f"{master.url}/repo/dists/testing/main/binary-amd64/Packages",
                           timeout=10).text
    (entry,) = [s for s in parse_packages(testing) if s["Package"] == "kept"]
    assert entry["Version"] == "1.2-1"
    assert entry["Filename"] == "pool/main/k/kept/kept_1.2-1_all.deb"
    key = requests.get(master.url + "/repo/key.gpg", timeout=10).content
    signed_apt(master, tmp_path / "apt-testing", key, suite="testing").update()

    # Newer uploads to stable do not remove what testing still serves.
    for version in ("1.4-1", "1.5-1"):
        assert upload(master, make_deb(tmp_path / version, "kept", version)).status_code == 201
    pool = sorted(p.name for p in (master.data_dir / "repo/pool").rglob("kept_*"))
    assert pool == ["kept_1.2-1_all.deb", "kept_1.4-1_all.deb", "kept_1.5-1_all.deb"]


def test_index_matches_apt_ftparchive(master, tmp_path):
    """Same packages, control fields, sizes and hashes as apt-ftparchive writes for the pool."""
    if shutil.which("apt-ftparchive") is None:
        pytest.fail("apt-ftparchive is missing (apt-utils; run ./dev.sh setup)")
    for i, arch in enumerate(("all", "amd64", "amd64")):
        deb = make_deb(tmp_path / str(i), f"diff-{i}", f"1.{i}-1", arch=arch,
                       payload=bytes(range(256)) * (i + 1))
        assert upload(master, deb).status_code in (200, 201)
    repo = master.data_dir / "repo"
    ours = {s["Filename"]: s for s in parse_packages(
        (repo / "dists/stable/main/binary-amd64/Packages").read_text())}
    theirs_text = subprocess.run(["apt-ftparchive", "packages", "pool"], cwd=repo,
                                 capture_output=True, text=True, check=True).stdout
    theirs = {s["Filename"]: s for s in parse_packages(theirs_text)
              if s["Architecture"] in ("all", "amd64")}
    # apt-ftparchive lists every file in the pool; our index lists the newest of each.
    for filename, entry in ours.items():
        other = theirs[filename]
        for field in ("Package", "Version", "Architecture", "Maintainer", "Size", "MD5sum",
                      "SHA1", "SHA256", "Description", "Installed-Size"):
            if field in other or field in entry:
                assert entry.get(field) == other.get(field), (filename, field)
    newest = {}
    for entry in theirs.values():
        name = entry["Package"]
        if name not in newest or _newer(entry["Version"], newest[name]["Version"]):
            newest[name] = entry
    assert set(ours) == {e["Filename"] for e in newest.values()}


def _newer(a: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, "gt", b]).returncode == 0


def test_changed_index_is_never_answered_not_modified(master, tmp_path):
    """Two index writes within one second: a client asking If-Modified-Since still gets the
    new Release (its modification time has only one-second resolution)."""
    url = f"{master.url}/repo/dists/stable/Release"
    first = requests.get(url, timeout=10)
    assert upload(master, make_deb(tmp_path, "same-second", "1.0-1")).status_code == 201
    again = requests.get(url, timeout=10, headers={
        "If-Modified-Since": first.headers.get("Last-Modified", "")})
    assert again.status_code == 200
    assert again.content != first.content


def _agents_of(home: Path) -> list[int]:
    """PIDs of the gpg-agents serving the keyring at ``home``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if args and args[0].endswith(b"gpg-agent") and str(home).encode() in args:
            found.append(int(proc.name))
    return found


def test_a_stopped_master_leaves_no_gpg_agent(keys, tmp_path):
    with standalone_master(tmp_path / "farm", repository={
            "signing_key": str(keys["farm"])}) as master:
        assert upload(master, make_deb(tmp_path, "agent-pkg", "1.0-1")).status_code == 201
        home = master.data_dir / "gnupg"
        assert _agents_of(home), "signing the index started no agent: the test proves nothing"
    assert _agents_of(home) == []

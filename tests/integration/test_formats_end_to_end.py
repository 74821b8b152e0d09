"""One set of definitions, three package formats: the farm builds each as .deb, .rpm and pacman
package, and apt, dnf and pacman each install theirs into an empty root from the farm's own
signed repositories, resolving a dependency on another farm package, then upgrade.

An empty root provides nothing, not even /bin/sh, and no mirror of those distributions is
reachable: the farm builds the provider itself (`mf-sh`, Debian's static busybox as /bin/sh).
The rpm of `mf-hello` needs /bin/sh because rpm itself says so (its script has a shebang);
the deb and pacman packages name `mf-sh` in their per-format relations.
"""

from __future__ import annotations

import gzip
import html
import io
import re
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Farm
from tests.integration.farm import (
    BIN,
    PASSWORD,
    AptClient,
    DnfClient,
    PacmanClient,
    parse_packages,
    wait_for,
)
from tests.integration.test_repository import generate_key
from tests.unit.native_source import make_dsc

FORMATS = ["deb", "rpm", "pacman"]
MAINTAINER = "pkgfarm tests <tests@example.org>"


def _write(path: Path, text: str) -> None:
    """Write a definition only when its text changes: a definition's time is its builds'
    SOURCE_DATE_EPOCH, so rewriting an unchanged one would make different archives."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def write_definitions(folder: Path, data_version: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "mf-sh.yaml", f"""\
package:
  name: mf-sh
  version: '1.36'
  architecture: [amd64]
  license: GPL-2.0-only
  description: |
    a /bin/sh for empty roots
    Debian's statically linked busybox, installed as /bin/sh.
  maintainer: {MAINTAINER}
build_depends: [busybox-static]
build: |
  install -D -m 0755 /bin/busybox "$DESTDIR/bin/sh"
""")
    _write(folder / "mf-data.yaml", f"""\
package:
  name: mf-data
  version: '{data_version}'
  architecture: all
  license: MIT
  description: |
    the greeting mf-hello prints
  maintainer: {MAINTAINER}
build: |
  mkdir -p "$DESTDIR/usr/share/mf-data"
  echo "greeting {data_version} as $PKGFARM_FORMAT" > "$DESTDIR/usr/share/mf-data/greeting"
""")
    _write(folder / "mf-hello.yaml", f"""\
package:
  name: mf-hello
  version: '1.0'
  architecture: [amd64]
  license: MIT
  description: |
    prints the greeting of mf-data
  maintainer: {MAINTAINER}
  depends:
    deb: ["mf-data (>= 1.0)", mf-sh]
    rpm: ["mf-data (>= 1.0)"]
    pacman: ["mf-data (>= 1.0)", mf-sh]
build: |
  mkdir -p "$DESTDIR/usr/bin"
  printf '#!/bin/sh\\nread line < /usr/share/mf-data/greeting\\necho "mf-hello: $line"\\n' \\
    > "$DESTDIR/usr/bin/mf-hello"
  chmod 0755 "$DESTDIR/usr/bin/mf-hello"
""")
    _write(folder / "mf-arm.yaml", f"""\
package:
  name: mf-arm
  version: '1.0'
  architecture: [arm64]
  description: |
    arm64-only package
  maintainer: {MAINTAINER}
build: |
  mkdir -p "$DESTDIR/usr/share/mf-arm"
  echo "built for $PKGFARM_ARCH as $PKGFARM_FORMAT" > "$DESTDIR/usr/share/mf-arm/marker"
""")


@pytest.fixture(scope="module")
def farm(tmp_path_factory, receiver) -> Iterator[Farm]:
    root = tmp_path_factory.mktemp("formats")
    key = root / "farm.asc"
    generate_key(key)
    definitions = root / "definitions"
    write_definitions(definitions, "1.0")
    hook = {"name": "formats", "url": receiver.url, "secret": "formats-hook-secret-0123456789",
            "events": ["build.created", "job.finished", "build.finished"], "backoff": 0.2}
    f = Farm(root, extra_master={"public_pages": True, "webhooks": [hook]}, extra={
        "package_paths": [str(definitions)],
        "repository": {"suite": "stable", "component": "main",
                       "architectures": ["amd64", "arm64"], "formats": FORMATS,
                       "signing_key": str(key)}})
    f.definitions = definitions
    try:
        f.start({"w-amd64": ["amd64"], "w-arm64": ["arm64"]})
        yield f
    finally:
        f.stop()


def health(farm: Farm) -> dict:
    return requests.get(farm.master.url + "/api/v1/health", timeout=10).json()


def files_of(build: dict) -> dict[tuple[str, str, str], list[str]]:
    return {(j["package"], j["arch"], j["format"]): j["files"] for j in build["jobs"]}


@pytest.fixture(scope="module")
def first_build(farm) -> dict:
    master = farm.master
    answer = master.api("POST", "/api/v1/builds",
                        json={"packages": ["mf-hello", "mf-data", "mf-sh", "mf-arm"]})
    assert answer.status_code == 202, answer.text
    assert answer.json()["notes"] == []
    build = master.wait_build(answer.json()["id"], timeout=600)
    assert build["status"] == "success", build
    return build


def test_one_job_per_package_arch_and_format(farm, first_build):
    files = files_of(first_build)
    assert set(files) == {(name, arch, fmt) for name, arch in (
        ("mf-sh", "amd64"), ("mf-data", "all"), ("mf-hello", "amd64"), ("mf-arm", "arm64"))
        for fmt in FORMATS}
    archives = {key: [f for f in names if not f.endswith(".buildinfo")]
                for key, names in files.items()}
    # The farm's architecture names map per format.
    assert archives[("mf-hello", "amd64", "deb")] == ["mf-hello_1.0-1_amd64.deb"]
    assert archives[("mf-hello", "amd64", "rpm")] == ["mf-hello-1.0-1.x86_64.rpm"]
    assert archives[("mf-hello", "amd64", "pacman")] == ["mf-hello-1.0-1-x86_64.pkg.tar.zst"]
    assert archives[("mf-data", "all", "rpm")] == ["mf-data-1.0-1.noarch.rpm"]
    assert archives[("mf-data", "all", "pacman")] == ["mf-data-1.0-1-any.pkg.tar.zst"]
    assert archives[("mf-arm", "arm64", "rpm")] == ["mf-arm-1.0-1.aarch64.rpm"]
    assert archives[("mf-arm", "arm64", "pacman")] == ["mf-arm-1.0-1-aarch64.pkg.tar.zst"]
    # Queues are the architecture's, whatever the format: arm64 work went to the arm64 worker.
    for job in first_build["jobs"]:
        if job["arch"] == "arm64":
            assert job["worker"] == "w-arm64"
        if job["arch"] == "amd64":
            assert job["worker"] == "w-amd64"
    listed = farm.master.api("GET", "/api/v1/packages").json()["packages"]
    assert {(p["name"], p["format"]) for p in listed} >= {
        (name, fmt) for name in ("mf-sh", "mf-data", "mf-hello", "mf-arm") for fmt in FORMATS}
    log = farm.master.api("GET", f"/api/v1/builds/{first_build['id']}/packages/mf-data/log",
                          params={"format": "pacman"})
    assert log.status_code == 200 and "building mf-data 1.0-1 for all" in log.text
    # Without ?format= the address names three jobs; the links the farm gives name one (see
    # test_every_log_link_answers_with_its_jobs_log).
    ambiguous = farm.master.api("GET",
                                f"/api/v1/builds/{first_build['id']}/packages/mf-data/log")
    assert ambiguous.status_code == 400 and "?format=" in ambiguous.json()["error"]


def archive_of(job: dict) -> str:
    (archive,) = [f for f in job["files"] if not f.endswith(".buildinfo")]
    return archive


def test_every_log_link_answers_with_its_jobs_log(farm, first_build, receiver):
    """The build's API answer, its build.finished webhook and each job.finished webhook give
    log links naming arch and format: each answers 200 with that job's own log (the one that
    built its archive), though the build made each package in three formats."""
    master = farm.master
    build_id = first_build["id"]
    expected = {(j["package"], j["arch"], j["format"]): archive_of(j)
                for j in first_build["jobs"]}

    def delivered() -> dict | None:
        bodies = [e["json"] for e in receiver.accepted()]
        finished = [b for b in bodies if b["event"] == "build.finished"
                    and b["build"]["id"] == build_id]
        jobs = [b for b in bodies if b["event"] == "job.finished"
                and b["data"]["build_id"] == build_id]
        done = {(b["data"]["package"], b["data"]["arch"], b["data"]["format"]) for b in jobs}
        return {"finished": finished[0], "jobs": jobs} if finished and done == set(
            expected) else None

    bodies = wait_for(delivered, 60, "the build's webhook deliveries")
    created = next(e["json"] for e in receiver.accepted()
                   if e["json"]["event"] == "build.created"
                   and e["json"]["data"]["build_id"] == build_id)
    assert {(j["package"], j["arch"], j["format"]) for j in created["data"]["jobs"]} == set(
        expected)
    links = [(j["package"], j["arch"], j["format"], j["log_url"]) for j in first_build["jobs"]]
    links += [(j["package"], j["arch"], j["format"], j["log_url"])
              for j in bodies["finished"]["build"]["jobs"]]
    links += [(b["data"]["package"], b["data"]["arch"], b["data"]["format"], b["log_url"])
              for b in bodies["jobs"]]
    assert len(links) >= 3 * len(expected)
    for package, arch, fmt, url in links:
        assert url.startswith(master.url) and f"format={fmt}" in url, url
        answer = requests.get(url, auth=("reader", PASSWORD), timeout=30)
        assert answer.status_code == 200, (url, answer.text)
        assert f"building {package} " in answer.text
        assert f"built {expected[(package, arch, fmt)]} " in answer.text, (url, answer.text)
    # The events themselves name the format of each job.
    events = master.api("GET", "/api/v1/events/list",
                        params={"build": build_id, "kinds": "job.finished"}).json()["events"]
    assert {(e["package"], e["arch"], e["format"]) for e in events} == set(expected)


def test_metrics_count_jobs_and_uploads_per_format(farm, first_build):
    text = farm.master.api("GET", "/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    for fmt in FORMATS:
        # mf-sh and mf-hello for amd64, in each format, at least (later builds add more)
        assert samples[("pkgfarm_jobs_finished_total", (("arch", "amd64"), ("format", fmt),
                                                        ("outcome", "success")))] >= 2
        assert samples[("pkgfarm_uploads_total", (("format", fmt),
                                                  ("result", "accepted")))] >= 4


def test_arm64_packages_are_in_every_formats_index(farm, first_build):
    master = farm.master
    assert "mf-arm" in {s["Package"] for s in parse_packages(master.index("arm64"))}
    assert "mf-arm" not in {s["Package"] for s in parse_packages(master.index("amd64"))}
    config = health(farm)["repository"]["formats"]
    repomd = requests.get(config["rpm"]["url"] + "repodata/repomd.xml", timeout=10).text
    primary_href = re.search(r'<location href="(repodata/[^"]+-primary\.xml\.gz)"', repomd)[1]
    answer = requests.get(config["rpm"]["url"] + primary_href, timeout=10)
    # Served as the compressed file it is, never with a Content-Encoding a client would undo.
    assert "Content-Encoding" not in answer.headers
    assert answer.headers["Content-Type"] == "application/gzip"
    primary = gzip.decompress(answer.content).decode()
    assert re.search(r"<name>mf-arm</name>\s*<arch>aarch64</arch>", primary)
    db_url = config["pacman"]["db_url"]
    for arch, expected in (("aarch64", True), ("x86_64", False)):
        db = requests.get(db_url.replace("$arch", arch), timeout=10)
        assert db.status_code == 200
        with tarfile.open(fileobj=io.BytesIO(db.content)) as tar:
            names = {m.name.split("/")[0] for m in tar.getmembers()}
        assert ("mf-arm-1.0-1" in names) is expected, (arch, names)
        assert "mf-data-1.0-1" in names  # `any` packages are in every architecture's db


def chroot_run(root: Path, program: str) -> str:
    return subprocess.run(["chroot", str(root), program], capture_output=True, text=True,
                          check=True, timeout=30).stdout


def apt_client(farm: Farm, root: Path) -> AptClient:
    keyring = root / "farm.gpg"
    root.mkdir(parents=True)
    keyring.write_bytes(requests.get(farm.master.url + "/repo/key.gpg", timeout=10).content)
    snippet = health(farm)["repository"]["formats"]["deb"]["snippet"]
    line = snippet.replace("/etc/apt/keyrings/pkgfarm.gpg", str(keyring))
    assert line.startswith("deb [signed-by=") and " stable main" in line
    return AptClient(root / "apt", line)


def pacman_client(farm: Farm, root: Path) -> PacmanClient:
    data = health(farm)
    config = data["repository"]["formats"]["pacman"]
    root.mkdir(parents=True)
    key = root / "farm-key.gpg"
    key.write_bytes(requests.get(config["key_url"], timeout=10).content)
    assert "SigLevel = Required" in config["snippet"]
    return PacmanClient(root, config["snippet"], key, data["signing_key"])


def test_each_client_installs_its_format_then_upgrades(farm, first_build, tmp_path):
    """apt, dnf and pacman install mf-hello into empty roots, resolving mf-data (and a
    /bin/sh) from the farm; the program runs there. Then the farm publishes mf-data 1.1 and
    each client upgrades to it."""
    apt = apt_client(farm, tmp_path / "deb")
    apt.update()
    deb_root = tmp_path / "deb-root"
    apt.install_into(deb_root, "mf-hello")
    assert chroot_run(deb_root, "/usr/bin/mf-hello") == "mf-hello: greeting 1.0 as deb\n"

    dnf = DnfClient(tmp_path / "rpm", health(farm)["repository"]["formats"]["rpm"]["snippet"])
    assert "repo_gpgcheck=1" in dnf.config.read_text()
    dnf.run("install", "mf-hello")
    assert dnf.program("/usr/bin/mf-hello") == "mf-hello: greeting 1.0 as rpm\n"
    requires = subprocess.run(["rpm", f"--root={dnf.root}", "-q", "--requires", "mf-hello"],
                              capture_output=True, text=True, check=True).stdout
    assert "/bin/sh" in requires.split()  # rpm's own requirement, met by the farm's mf-sh
    installed = subprocess.run(["rpm", f"--root={dnf.root}", "-qa", "--qf", "%{NAME}\n"],
                               capture_output=True, text=True, check=True).stdout.split()
    assert sorted(installed) == ["mf-data", "mf-hello", "mf-sh"]

    pacman = pacman_client(farm, tmp_path / "pacman")
    pacman.run("-Sy", "mf-hello")
    assert chroot_run(pacman.root, "/usr/bin/mf-hello") == \
        "mf-hello: greeting 1.0 as pacman\n"

    # A newer mf-data, built in every format and published: each client upgrades to it.
    write_definitions(farm.definitions, "1.1")
    build = farm.master.wait_build(farm.master.submit(["mf-data"]), timeout=600)
    assert build["status"] == "success", build
    assert {j["format"] for j in build["jobs"]} == set(FORMATS)

    apt.update()
    apt.install_into(deb_root, "mf-data")
    assert chroot_run(deb_root, "/usr/bin/mf-hello") == "mf-hello: greeting 1.1 as deb\n"
    dnf.run("upgrade", "--refresh")
    assert dnf.program("/usr/bin/mf-hello") == "mf-hello: greeting 1.1 as rpm\n"
    pacman.run("-Syu")
    assert chroot_run(pacman.root, "/usr/bin/mf-hello") == \
        "mf-hello: greeting 1.1 as pacman\n"
    query = pacman.run("-Q", "mf-data").stdout
    assert query.strip() == "mf-data 1.1-1"


def test_repository_page_and_health_show_every_client(farm, first_build):
    configs = health(farm)["repository"]["formats"]
    assert list(configs) == FORMATS
    assert configs["rpm"]["url"].endswith("/repo/rpm/stable/")
    assert "[pkgfarm-stable]" in configs["pacman"]["snippet"]
    page = requests.get(farm.master.url + "/repository", timeout=10)  # public_pages
    assert page.status_code == 200
    for config in configs.values():
        assert html.escape(config["snippet"].strip().splitlines()[0]) in page.text


def test_a_debian_source_is_built_as_deb_only_and_the_answer_says_so(farm, tmp_path):
    dsc = make_dsc(tmp_path / "tiny")
    answer = farm.master.api("POST", "/api/v1/builds", json={"packages": [str(dsc)]})
    assert answer.status_code == 202, answer.text
    data = answer.json()
    assert {j["format"] for j in data["jobs"]} == {"deb"}
    assert data["notes"] == ["pkgfarm-tiny is a Debian source package: it is built as deb "
                             "only, not as rpm, pacman"]
    farm.master.api("POST", f"/api/v1/builds/{data['id']}/cancel")
    wait_for(lambda: farm.master.api("GET", f"/api/v1/builds/{data['id']}").json()["status"]
             in ("cancelled", "success", "failed"), 60, "the build to end")


def test_unknown_formats_and_inexpressible_relations_are_refused(farm):
    bad = farm.definitions / "mf-bad.yaml"
    bad.write_text(f"""\
package:
  name: mf-bad
  version: '1.0'
  architecture: all
  description: |
    alternatives pacman cannot express
  maintainer: {MAINTAINER}
  depends: ["mf-data | mf-sh"]
build: "true"
""")
    answer = farm.master.api("POST", "/api/v1/builds", json={"packages": ["mf-bad"]})
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == "package.depends"
    assert "pacman has no alternatives" in answer.json()["error"]
    bad.write_text(bad.read_text().replace('  depends: ["mf-data | mf-sh"]\n',
                                           "  formats: [deb, snap]\n"))
    answer = farm.master.api("POST", "/api/v1/builds", json={"packages": ["mf-bad"]})
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == "package.formats"
    assert "snap" in answer.json()["error"]
    # A relation each format can say as a dependency, but not in provides.
    for provides, field, words in (
            ("{rpm: ['mf-a | mf-b']}", "package.provides.rpm", "rpm allows no alternatives"),
            ("{pacman: ['mf-a (>= 1.0)']}", "package.provides.pacman",
             "makepkg refuses a provides")):
        bad.write_text(bad.read_text().split("  formats:")[0].split("  provides:")[0]
                       + f"  provides: {provides}\nbuild: \"true\"\n")
        answer = farm.master.api("POST", "/api/v1/builds", json={"packages": ["mf-bad"]})
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == field and words in answer.json()["error"]
    bad.unlink()


def worker_cli(farm: Farm, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "worker"), *args, "--config", str(farm.config)],
                          capture_output=True, text=True, timeout=600)


def test_package_add_now_makes_every_format_or_those_asked_for(farm, first_build):
    """`worker package-add NAME --now` builds here, uploads and waits for each format's
    index; --format narrows it (the same definition: the archives are the published ones)."""
    narrowed = worker_cli(farm, "package-add", "mf-sh", "--now", "--format", "rpm",
                          "--format", "pacman")
    assert narrowed.returncode == 0, narrowed.stderr[-3000:]
    lines = narrowed.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["mf-sh-1.36-1.x86_64.rpm",
                                                    "mf-sh-1.36-1-x86_64.pkg.tar.zst"]
    assert f"{farm.master.url}/repo/rpm/stable/" in lines[0]
    every = worker_cli(farm, "package-add", "mf-hello", "--now")
    assert every.returncode == 0, every.stderr[-3000:]
    assert [line.split()[0] for line in every.stdout.splitlines()] == [
        "mf-hello_1.0-1_amd64.deb", "mf-hello-1.0-1.x86_64.rpm",
        "mf-hello-1.0-1-x86_64.pkg.tar.zst"]
    unknown = worker_cli(farm, "package-add", "mf-sh", "--now", "--format", "snap")
    assert unknown.returncode != 0 and "unknown package format 'snap'" in unknown.stderr


def test_removal_and_promotion_may_name_one_format(farm, first_build):
    """A version names the deb, the rpm and the pacman package alike: ?format= removes only
    one format's archive, from its pool and its index; the others stay."""
    master = farm.master
    before = {v["format"] for v in master.api("GET", "/api/v1/packages/mf-arm").json()[
        "versions"]}
    assert before == set(FORMATS)
    unserved = master.api("POST", "/api/v1/packages/mf-arm/promote",
                          json={"version": "1.0-1", "from": "stable", "to": "stable",
                                "format": "snap"})
    assert unserved.status_code == 400 and unserved.json()["field"] == "format"
    gone = master.api("DELETE", "/api/v1/packages/mf-arm",
                      params={"version": "1.0-1", "format": "rpm"})
    assert gone.status_code == 200, gone.text
    assert gone.json()["removed"] == ["mf-arm-1.0-1.aarch64.rpm"]
    left = master.api("GET", "/api/v1/packages/mf-arm").json()["versions"]
    assert {v["format"] for v in left} == {"deb", "pacman"}
    assert not list((farm.data_dir / "repo/rpm/pool").rglob("mf-arm-*"))
    config = health(farm)["repository"]["formats"]
    repomd = requests.get(config["rpm"]["url"] + "repodata/repomd.xml", timeout=10).text
    href = re.search(r'<location href="(repodata/[^"]+-primary\.xml\.gz)"', repomd)[1]
    primary = gzip.decompress(requests.get(config["rpm"]["url"] + href, timeout=10).content)
    assert b"<name>mf-arm</name>" not in primary
    db = requests.get(config["pacman"]["db_url"].replace("$arch", "aarch64"), timeout=10)
    with tarfile.open(fileobj=io.BytesIO(db.content)) as tar:
        assert "mf-arm-1.0-1" in {m.name.split("/")[0] for m in tar.getmembers()}
    assert "mf-arm" in {s["Package"] for s in parse_packages(master.index("arm64"))}


"""The master serves HTTPS itself, with a certificate from a CA this test makes.

A worker that trusts that CA builds a set in clean roots: the second package build-depends on
the first, so its root installs the first from the farm's repository over HTTPS, trusting the
farm's CA and nothing else for it. A worker given another CA is refused, and so is a client
without the CA; a stock apt with the CA reads the repository.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from common.arch import host_arch
from tests.integration.farm import (
    BIN,
    AptClient,
    Master,
    RedisServer,
    Worker,
    free_port,
    make_ca,
    running,
    write_config,
)

BASES = Path(os.environ.get("PKGFARM_TEST_BASES", "/var/cache/pkgfarm-tests/bases"))

LIB = """\
package:
  name: itest-tls-lib
  version: 1.0
  release: 1
  architecture: all
  description: |
    A library other farm packages build against
  maintainer: pkgfarm tests <tests@example.org>
build: |
  mkdir -p "$DESTDIR/usr/share/itest-tls-lib"
  echo "from the farm over https" > "$DESTDIR/usr/share/itest-tls-lib/greeting"
"""

APP = """\
package:
  name: itest-tls-app
  version: 1.0
  release: 1
  architecture: all
  description: |
    Built against itest-tls-lib, fetched from the farm's repository over HTTPS
  maintainer: pkgfarm tests <tests@example.org>
build_depends: [itest-tls-lib]
build: |
  mkdir -p "$DESTDIR/usr/share/itest-tls-app"
  cp /usr/share/itest-tls-lib/greeting "$DESTDIR/usr/share/itest-tls-app/"
"""


@pytest.fixture(scope="module")
def tls_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Master, Path, Path]]:
    """redis-server, a master serving HTTPS with a certificate of a test CA, and a worker
    trusting that CA that builds in clean roots."""
    if os.geteuid() != 0:
        pytest.skip("clean environments need root")
    root = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_ca(root / "pki")
    packages = root / "packages"
    packages.mkdir()
    (packages / "itest-tls-lib.yaml").write_text(LIB)
    (packages / "itest-tls-app.yaml").write_text(APP)
    redis = RedisServer(root / "redis")
    port = free_port()
    config = write_config(
        root / "config.yaml", data_dir=root / "data", port=port, broker_url=redis.url,
        package_paths=[packages], architectures=(host_arch(),),
        extra_master={"tls_cert": str(cert), "tls_key": str(key)},
        extra_worker={"ca_file": str(ca), "environment": "clean", "base_dir": str(BASES),
                      "master_url": f"https://127.0.0.1:{port}"})
    master = Master(config, port, root / "master.log", ca_file=ca)
    worker = Worker(config, "w-tls", [host_arch()], root / "worker.log")
    with running(redis, master, worker):
        yield master, ca, config


def test_master_speaks_https_only_with_its_ca(tls_farm):
    master, _, _ = tls_farm
    assert master.url.startswith("https://")
    health = master.api("GET", "/api/v1/health", user=None).json()
    assert health["repository"]["url"].startswith("https://")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(master.url + "/api/v1/health", timeout=5)  # the system's CAs only
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(master.url.replace("https://", "http://") + "/api/v1/health", timeout=5)


def test_set_builds_over_https_in_clean_roots(tls_farm, tmp_path):
    master, ca, _ = tls_farm
    build = master.wait_build(master.submit(["itest-tls-lib", "itest-tls-app"]), timeout=600)
    assert build["status"] == "success", build
    app_log = master.api("GET", f"/api/v1/builds/{build['id']}/packages/itest-tls-app/log").text
    # The clean root fetched the farm's package over HTTPS.
    assert "https://127.0.0.1" in app_log and "itest-tls-lib" in app_log, app_log
    apt = AptClient(tmp_path / "apt", f"deb [trusted=yes] {master.url}/repo stable main",
                    (host_arch(),))
    (apt.root / "etc/apt.conf.d/ca").write_text(f'Acquire::https::CaInfo "{ca}";\n')
    apt.update()
    deb = apt.download("itest-tls-app")
    unpacked = tmp_path / "unpacked"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    assert (unpacked / "usr/share/itest-tls-app/greeting").read_text() == \
        "from the farm over https\n"


def test_worker_with_another_ca_is_refused(tls_farm, tmp_path):
    master, _, good = tls_farm
    other_ca, _, _ = make_ca(tmp_path / "other", name="some other CA")
    config = yaml.safe_load(good.read_text())
    config["worker"]["ca_file"] = str(other_ca)
    config["worker"]["work_dir"] = str(tmp_path / "work")
    wrong = tmp_path / "wrong-ca.yaml"
    wrong.write_text(yaml.safe_dump(config))
    result = subprocess.run([str(BIN / "worker"), "run", "--config", str(wrong), "--name",
                             "w-wrong-ca"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "cannot verify the TLS certificate of the master" in result.stderr, result.stderr
    result = subprocess.run([str(BIN / "worker"), "package-add", "itest-tls-lib", "--now",
                             "--config", str(wrong)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "certificate verify failed" in result.stderr, result.stderr
    names = {w["name"] for w in master.api("GET", "/api/v1/workers").json()["workers"]}
    assert names == {"w-tls"}

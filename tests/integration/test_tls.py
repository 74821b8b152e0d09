"""The master serves HTTPS itself, with a certificate from a CA this test makes.

A worker that trusts that CA builds a set in clean roots: the second package build-depends on
the first, so its root installs the first from the farm's repository over HTTPS, trusting the
farm's CA and nothing else for it. A worker given another CA is refused, and so is a client
without the CA; a stock apt with the CA reads the repository; the ``master`` command's client
commands reach the master with the CA in ``client.ca_file`` and stop with a clear error with
another. A master started on every address without TLS warns of it (in a network namespace of
its own, so that "every address" is only its own loopback).
"""

from __future__ import annotations

import json
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
    PASSWORD,
    AptClient,
    Master,
    RedisServer,
    Worker,
    free_port,
    make_ca,
    running,
    stop_process,
    wait_for,
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


def _client_command(master: Master, config: Path, tmp_path: Path, ca_file: Path | None,
                    *args: str) -> subprocess.CompletedProcess[str]:
    """``master ARGS`` with the farm's config, its client section pointed at the HTTPS
    master with ``ca_file`` (none: the system's CAs only)."""
    data = yaml.safe_load(config.read_text())
    data["client"] = {"url": master.url, "user": "admin", "password": PASSWORD}
    if ca_file is not None:
        data["client"]["ca_file"] = str(ca_file)
    path = tmp_path / f"client-{ca_file.parent.name if ca_file else 'system'}.yaml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return subprocess.run([str(BIN / "master"), *args, "--config", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_client_commands_over_https(tls_farm, tmp_path):
    master, ca, config = tls_farm
    status = _client_command(master, config, tmp_path, ca, "status")
    assert status.returncode == 0, status.stderr
    assert f"master:      {master.url} (" in status.stdout, status.stdout
    assert f"repository:  {master.url}/repo" in status.stdout, status.stdout
    builds = _client_command(master, config, tmp_path, ca, "builds", "--json")
    assert builds.returncode == 0, builds.stderr
    assert isinstance(json.loads(builds.stdout)["builds"], list)

    other_ca, _, _ = make_ca(tmp_path / "other", name="some other CA")
    for wrong in (other_ca, None):
        result = _client_command(master, config, tmp_path, wrong, "status")
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert result.stderr.startswith(
            f"master: error: cannot verify the TLS certificate of the master at {master.url} "
            "(client.ca_file): "), result.stderr
        assert "certificate verify failed" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""


def test_master_in_clear_beyond_loopback_warns_at_start(tmp_path):
    """``master serve`` bound to 0.0.0.0 without TLS, run as a user runs it: it starts, and
    its log says that passwords would cross the network in clear. It runs in a network
    namespace of its own, where the only interface is a loopback nobody else reaches."""
    if os.geteuid() != 0:
        pytest.skip("a network namespace of the test's own needs root")
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare --net cannot make a network namespace here: {probe.stderr}")
    port = free_port()
    packages = tmp_path / "packages"
    packages.mkdir()
    config = write_config(tmp_path / "config.yaml", data_dir=tmp_path / "data", port=port,
                          broker_url=None, package_paths=[packages],
                          extra_master={"bind": f"0.0.0.0:{port}"})
    log = tmp_path / "master.log"
    with open(log, "ab") as out:
        # unshare runs the shell in the new namespace, which raises its loopback and becomes
        # the master: the process the test stops is the master's arbiter.
        proc = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c",
             'ip link set lo up && exec "$0" serve --config "$1"', str(BIN / "master"),
             str(config)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def started() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the master exited with {proc.returncode}:\n"
                                   + log.read_text()[-3000:])
            return f"Listening at: http://0.0.0.0:{port}" in log.read_text()

        wait_for(started, 60, f"the master in its own network namespace (log: {log})")
        # Inside its namespace it answers; from the test's namespace nothing is there.
        health = subprocess.run(
            ["nsenter", f"--net=/proc/{proc.pid}/ns/net", "--", str(BIN / "python"), "-c",
             f"import requests; print(requests.get('http://127.0.0.1:{port}/api/v1/health', "
             "timeout=10).status_code)"], capture_output=True, text=True, timeout=60)
        assert health.stdout.strip() == "200", health.stderr
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=5)
    finally:
        stop_process(proc)
    text = log.read_text()
    warnings = [line for line in text.splitlines()
                if " WARNING " in line and "without TLS" in line]
    assert len(warnings) == 1, text[-3000:]
    assert f"the master listens on 0.0.0.0:{port} without TLS: passwords and tokens cross the " \
           "network in clear" in warnings[0]
    assert "master.tls_cert" in warnings[0]

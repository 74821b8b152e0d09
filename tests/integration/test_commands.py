"""The master and worker commands as a user types them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import yaml
from werkzeug.security import check_password_hash

from tests.integration.farm import (
    BIN,
    TEST_PACKAGES,
    AptClient,
    Master,
    Worker,
    free_port,
    parse_packages,
    running,
    sha256_file,
    wait_for,
    write_config,
)


def run(*args: str, stdin: str = "", env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / args[0]), *args[1:]], input=stdin, capture_output=True,
                          text=True, timeout=180, env={**os.environ, **(env or {})})


def test_worker_package_add_now(farm, tmp_path):
    result = run("worker", "package-add", "itest-now", "--now", "--config", str(farm.config))
    assert result.returncode == 0, result.stderr
    assert "itest-now_2.0-1_amd64.deb is in" in result.stdout
    entry = next(s for s in parse_packages(farm.master.index("amd64"))
                 if s["Package"] == "itest-now")
    apt = AptClient(tmp_path / "apt", f"deb [trusted=yes] {farm.master.url}/repo stable main")
    apt.update()
    deb = apt.download("itest-now:amd64")
    assert sha256_file(deb) == entry["SHA256"]


def test_worker_package_add_failure_exits_nonzero(farm):
    result = run("worker", "package-add", "itest-fail", "--now", "--config", str(farm.config))
    assert result.returncode != 0
    assert "exit status 3" in result.stderr
    unknown = run("worker", "package-add", "no-such-thing", "--now", "--config",
                  str(farm.config))
    assert unknown.returncode != 0
    assert "no package definition named 'no-such-thing'" in unknown.stderr


def test_worker_package_add_queues_without_now(farm):
    result = run("worker", "package-add", "itest-all", "--config", str(farm.config))
    assert result.returncode == 0, result.stderr
    build = farm.master.wait_build(int(result.stdout.strip()))
    assert build["status"] == "success"


def test_master_package_add_queues(farm):
    result = run("master", "package-add", "itest-amd64", "--arch", "amd64", "--config",
                 str(farm.config))
    assert result.returncode == 0, result.stderr
    build = farm.master.wait_build(int(result.stdout.strip()))
    assert [(j["package"], j["arch"], j["status"]) for j in build["jobs"]] == [
        ("itest-amd64", "amd64", "success")]


def test_user_add_prints_a_working_entry():
    result = run("master", "user-add", "alice", "--role", "read", "--role", "build",
                 stdin="s3cret-pass\n")
    assert result.returncode == 0, result.stderr
    assert "s3cret-pass" not in result.stdout
    entry = yaml.safe_load(result.stdout)["master"]["users"]["alice"]
    assert entry["roles"] == ["read", "build"]
    assert check_password_hash(entry["password_hash"], "s3cret-pass")
    bad = run("master", "user-add", "bob", "--role", "superuser", stdin="x\n")
    assert bad.returncode != 0
    assert "unknown role 'superuser'" in bad.stderr


def test_bad_config_names_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("master:\n  data_dir: /tmp/x\n  colour: blue\n")
    result = run("master", "serve", "--config", str(config))
    assert result.returncode != 0
    assert "master.colour: unknown key" in result.stderr
    config.write_text("worker:\n  concurrency: many\n")
    result = run("worker", "run", "--config", str(config))
    assert result.returncode != 0
    assert "worker.concurrency: must be an integer" in result.stderr
    result = run("master", "serve", env={"PKGFARM_CONFIG": str(tmp_path / "missing.yaml")})
    assert result.returncode != 0
    assert "cannot read config file" in result.stderr


def test_embedded_broker_and_worker_drop_out(tmp_path):
    """No broker_url: the master runs its own redis-server; a killed worker leaves the list."""
    port = free_port()
    config = write_config(tmp_path / "config.yaml", data_dir=tmp_path / "d", port=port,
                          broker_url=None, package_paths=[TEST_PACKAGES],
                          extra_master={"worker_ttl": 3})
    master = Master(config, port, tmp_path / "master.log")
    worker = Worker(config, "w-embedded", ["amd64"], tmp_path / "worker.log")
    with running(master, worker):
        assert (tmp_path / "d/redis/redis.sock").is_socket()
        # The only worker is tagged amd64: an arm64 job waits, the rest goes on.
        waiting = master.submit(["itest-arm64"])
        build = master.wait_build(master.submit(["itest-all"]), timeout=120)
        assert build["status"] == "success"
        assert master.api("GET", f"/api/v1/builds/{waiting}").json()["status"] == "queued"
        names = [w["name"] for w in master.api("GET", "/api/v1/workers").json()["workers"]]
        assert names == ["w-embedded"]
        worker.stop(signal.SIGKILL)
        wait_for(lambda: master.api("GET", "/api/v1/workers").json()["workers"] == [], 15,
                 "the killed worker to leave the list")
        log_before = master.api(
            "GET", f"/api/v1/builds/{build['id']}/packages/itest-all/log").text
    # The private redis-server stopped with the master.
    assert not _redis_answers(tmp_path / "d/redis/redis.sock")

    # Records, logs and the repository survive a restart of the master.
    with running(master):
        assert master.api("GET", f"/api/v1/builds/{build['id']}").json() == build
        assert master.api(
            "GET", f"/api/v1/builds/{build['id']}/packages/itest-all/log").text == log_before
        assert "Package: itest-all" in master.index("amd64")
        # The arm64 job is still queued, in the store and in the private Redis's AOF.
        assert master.api("GET", f"/api/v1/builds/{waiting}").json()["status"] == "queued"
        # A crash of the master takes its private Redis down too, so a new master can start.
        master.crash()
        wait_for(lambda: not _redis_answers(tmp_path / "d/redis/redis.sock"), 10,
                 "the private redis-server to stop with the master")
        master.start()
        assert master.api("GET", f"/api/v1/builds/{waiting}").json()["status"] == "queued"


def _redis_answers(sock) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            s.connect(str(sock))
            return True
    except OSError:
        return False

"""The deployment files, checked without running them: every compose file is valid for Debian's
docker-compose, asks for every secret with no default, publishes where the environment says,
and keeps the settings that make it secure; the recipes' configs hold no password or hash; the
certificate script makes what the TLS recipes mount; the systemd units pass
`systemd-analyze verify`. test_compose.py runs the compose files for real.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.farm import REPO_ROOT

COMPOSE_FILES = [REPO_ROOT / "docker-compose.yml",
                 *sorted(REPO_ROOT.glob("recipes/*/docker-compose.yml"))]
CONTAINER_CONFIG = "/etc/pkgfarm/config.yaml"
MAKE_CERTS = REPO_ROOT / "recipes/distributed/make-certs.sh"
SYSTEMD = REPO_ROOT / "systemd"


def secrets_of(path: Path) -> list[str]:
    """The variables a compose file requires (`${NAME:?message}`)."""
    return sorted(set(re.findall(r"\$\{(\w+):\?", path.read_text())))


def compose(path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed (run ./dev.sh setup)")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PKGFARM_", "COMPOSE_"))}
    return subprocess.run(["docker-compose", "-f", str(path), *args], capture_output=True,
                          text=True, env={**clean, **env}, timeout=60)


def resolved(path: Path, **extra: str) -> dict[str, Any]:
    env = {name: f"value-of-{name.lower()}" for name in secrets_of(path)} | extra
    result = compose(path, env, "config")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = yaml.safe_load(result.stdout)
    return data


def ids(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def argv(command: Any) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def test_every_recipe_has_a_compose_file_and_readme():
    recipes = sorted(p.name for p in (REPO_ROOT / "recipes").iterdir() if p.is_dir()
                     and p.name != "default")
    assert {"distributed", "distributed-manual"} <= set(recipes)
    for name in recipes:
        assert (REPO_ROOT / "recipes" / name / "docker-compose.yml").is_file()
        readme = (REPO_ROOT / "recipes" / name / "README.md").read_text()
        assert "1." in readme and "2." in readme


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=ids)
def test_compose_file_is_valid_once_its_secrets_are_set(path: Path):
    required = secrets_of(path)
    assert {"PKGFARM_REDIS_PASSWORD", "PKGFARM_ADMIN_PASSWORD"} <= set(required)
    env = {name: "x" for name in required}
    check = compose(path, env, "config", "-q")
    assert check.returncode == 0, check.stderr
    # Each one unset stops compose with a message that names it.
    for name in required:
        result = compose(path, {k: v for k, v in env.items() if k != name}, "config", "-q")
        assert result.returncode != 0
        assert f"set {name}" in result.stderr, result.stderr


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=ids)
def test_no_committed_secret(path: Path):
    text = path.read_text()
    # No fallback value for any password: `${VAR:-default}` or `${VAR-default}`.
    assert not re.search(r"\$\{\w*PASSWORD\w*:?-", text), text
    for service in resolved(path)["services"].values():
        for volume in service.get("volumes", []):
            if volume.split(":")[1] == CONTAINER_CONFIG:
                config = yaml.safe_load(Path(volume.split(":")[0]).read_text())
                users = config.get("master", {}).get("users", {})
                assert users and all(set(u) == {"password_env", "roles"}
                                     for u in users.values()), users
                assert "password" not in config.get("worker", {})


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=ids)
def test_redis_password_is_required_and_used_everywhere(path: Path):
    services = resolved(path, PKGFARM_REDIS_PASSWORD="s3cret")["services"]
    redis = services["redis"]
    command = argv(redis["command"])
    assert command[command.index("--requirepass") + 1] == "s3cret"
    assert redis["environment"]["REDISCLI_AUTH"] == "s3cret"
    urls = [s["environment"]["PKGFARM_BROKER_URL"] for s in services.values()
            if "PKGFARM_BROKER_URL" in s.get("environment", {})]
    assert urls and all(":s3cret@redis:6379/" in url for url in urls), urls


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=ids)
def test_published_address_comes_from_the_environment(path: Path):
    def published(**env: str) -> list[str]:
        return [str(p) for s in resolved(path, **env)["services"].values()
                for p in s.get("ports", [])]

    default = published()
    assert default and all(p.startswith("127.0.0.1:") for p in default), default
    chosen = published(PKGFARM_PUBLISH_ADDRESS="192.0.2.7", PKGFARM_PORT="9999")
    assert all(p.startswith("192.0.2.7:") for p in chosen), chosen
    assert any(p.startswith("192.0.2.7:9999:") for p in chosen), chosen


def test_default_compose_scales_workers():
    services = resolved(REPO_ROOT / "docker-compose.yml")["services"]
    worker = services["worker"]
    # --scale needs no fixed name and no host port on the worker.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["depends_on"]["master"]["condition"] == "service_healthy"
    assert "healthcheck" in services["master"]
    assert "--appendonly yes" in " ".join(argv(services["redis"]["command"]))
    assert "ports" not in services["redis"]


def test_distributed_speaks_tls_to_redis_and_the_master():
    path = REPO_ROOT / "recipes/distributed/docker-compose.yml"
    services = resolved(path)["services"]
    redis = argv(services["redis"]["command"])
    assert redis[redis.index("--port") + 1] == "0"  # no port in clear
    assert "--tls-port" in redis
    config = yaml.safe_load((path.parent / "config.yaml").read_text())
    assert config["master"]["tls_cert"] and config["master"]["tls_key"]
    assert config["worker"]["master_url"].startswith("https://")
    assert config["worker"]["ca_file"] and config["broker_ca_file"]
    for name, service in services.items():
        env = service.get("environment", {})
        if "PKGFARM_BROKER_URL" in env:
            assert env["PKGFARM_BROKER_URL"].startswith("rediss://"), name
        if "PKGFARM_MASTER_URL" in env:
            assert env["PKGFARM_MASTER_URL"].startswith("https://"), name


def test_distributed_manual_builder_speaks_https():
    path = REPO_ROOT / "recipes/distributed-manual/docker-compose.yml"
    services = resolved(path)["services"]
    assert services["builder"]["environment"]["PKGFARM_MASTER_URL"].startswith("https://")
    assert "ports" not in services["redis"]
    config = yaml.safe_load((path.parent / "config.yaml").read_text())
    assert config["master"]["tls_cert"] and config["worker"]["ca_file"]


def test_make_certs_makes_what_the_recipes_mount(tmp_path: Path):
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (run ./dev.sh setup)")
    result = subprocess.run([str(MAKE_CERTS), "farm.example.org", "192.0.2.10"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    tls = tmp_path / "tls"
    assert stat.S_IMODE((tls / "private").stat().st_mode) == 0o700
    assert stat.S_IMODE((tls / "private/ca.key").stat().st_mode) == 0o600
    for service in ("master", "redis"):
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(tls / "ca.crt"),
                                 str(tls / f"{service}.crt")], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stderr
        names = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in",
                                str(tls / f"{service}.crt")], capture_output=True, text=True,
                               check=True).stdout
        for name in (f"DNS:{service}", "DNS:localhost", "IP Address:127.0.0.1",
                     "DNS:farm.example.org", "IP Address:192.0.2.10"):
            assert name in names, names
        assert (tls / "private" / f"{service}.key").is_file()
    # Every file the compose files mount from tls/ is made.
    for path in COMPOSE_FILES:
        for service in resolved(path)["services"].values():
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                if "/tls/" in source:
                    assert (tls / source.split("/tls/", 1)[1]).is_file(), source
    # A second run leaves the CA alone.
    again = subprocess.run([str(MAKE_CERTS)], cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode != 0 and "exists" in again.stderr


def test_systemd_units_verify(tmp_path: Path):
    """`systemd-analyze verify` of the units as shipped, in a root of the test's own: the
    units under etc/systemd/system, this machine's own unit folder beside them (targets such
    as sysinit.target), and stand-ins at the paths of the programs, which verify checks
    (the README installs them in /opt/pkgfarm). Warnings count as failures."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed (run ./dev.sh setup: package systemd)")
    units = sorted(SYSTEMD.glob("*.service"))
    assert {u.name for u in units} >= {"pkgfarm-master.service", "pkgfarm-worker.service"}
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in units:
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                program = Path(line.split("=", 1)[1].split()[0].lstrip("-@:+!"))
                stand_in = root / program.relative_to("/")
                stand_in.parent.mkdir(parents=True, exist_ok=True)
                stand_in.write_text("#!/bin/sh\n")
                stand_in.chmod(0o755)
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}",
                             *[u.name for u in units]], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr

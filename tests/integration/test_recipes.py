"""The compose files: valid for docker-compose, and their services' commands work together.

There is no Docker engine here, so each service's command (as `docker-compose config` resolves
it) runs as a local process, with the recipe's own config file, its environment, and the
container host names (redis, master) pointed at the local processes.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.integration.farm import BIN, REPO_ROOT, free_port, stop_process, wait_for

COMPOSE_FILES = [REPO_ROOT / "docker-compose.yml",
                 *sorted(REPO_ROOT.glob("recipes/*/docker-compose.yml"))]
CONTAINER_CONFIG = "/etc/pkgfarm/config.yaml"
DEMO_PASSWORD = "change-me"  # the documented demo password of the recipes' configs


def compose_config(path: Path) -> dict[str, Any]:
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed (run ./dev.sh setup)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PKGFARM_")}
    check = subprocess.run(["docker-compose", "-f", str(path), "config", "-q"],
                           capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stderr
    resolved = subprocess.run(["docker-compose", "-f", str(path), "config"],
                              capture_output=True, text=True, env=env, check=True)
    data: dict[str, Any] = yaml.safe_load(resolved.stdout)
    return data


def test_every_recipe_has_a_compose_file_and_readme():
    recipes = sorted(p.name for p in (REPO_ROOT / "recipes").iterdir() if p.is_dir()
                     and p.name != "default")
    assert {"distributed", "distributed-manual"} <= set(recipes)
    for name in recipes:
        assert (REPO_ROOT / "recipes" / name / "docker-compose.yml").is_file()
        readme = (REPO_ROOT / "recipes" / name / "README.md").read_text()
        assert "1." in readme and "2." in readme


def test_default_compose_scales_workers():
    services = compose_config(REPO_ROOT / "docker-compose.yml")["services"]
    worker = services["worker"]
    # --scale needs no fixed name and no host port on the worker.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["depends_on"]["master"]["condition"] == "service_healthy"
    assert "healthcheck" in services["master"]
    assert "--appendonly yes" in " ".join(_argv(services["redis"]["command"]))


def _argv(command: Any) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def _config_source(service: dict[str, Any], compose: Path) -> Path:
    for volume in service.get("volumes", []):
        if isinstance(volume, dict) and volume.get("target") == CONTAINER_CONFIG:
            return Path(volume["source"])
        if isinstance(volume, str) and volume.split(":")[1] == CONTAINER_CONFIG:
            return (compose.parent / volume.split(":")[0]).resolve()
    raise AssertionError(f"no config mounted at {CONTAINER_CONFIG}")


@pytest.mark.parametrize("compose", COMPOSE_FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_services_run_together_as_local_processes(compose, tmp_path):
    services = compose_config(compose)["services"]
    redis_port, master_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def local_env(name: str, service: dict[str, Any]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PKGFARM_")}
        for key, value in (service.get("environment") or {}).items():
            env[key] = (str(value).replace("@redis:6379", f"@127.0.0.1:{redis_port}")
                        .replace("//redis:6379", f"//127.0.0.1:{redis_port}")
                        .replace("//master:8080", f"//127.0.0.1:{master_port}"))
        env["PKGFARM_WORKER_NAME"] = name
        return env

    def local_config(name: str, service: dict[str, Any]) -> Path:
        config = yaml.safe_load(_config_source(service, compose).read_text())
        config["package_paths"] = [str(REPO_ROOT / "examples" / "packages")]
        config.setdefault("master", {}).update(
            bind=f"127.0.0.1:{master_port}", data_dir=str(tmp_path / "master-data"))
        config.setdefault("worker", {})["work_dir"] = str(tmp_path / f"work-{name}")
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(logs / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        procs.append(proc)
        return proc

    def command(name: str, service: dict[str, Any]) -> list[str]:
        argv = _argv(service["command"])
        config = str(local_config(name, service))
        argv = [config if a == CONTAINER_CONFIG else a for a in argv]
        return [str(BIN / argv[0]), *argv[1:]]

    try:
        redis_argv = _argv(services["redis"]["command"])
        assert redis_argv[0] == "redis-server"
        start("redis", [*redis_argv, "--port", str(redis_port), "--bind", "127.0.0.1",
                        "--dir", str(tmp_path)], dict(os.environ))
        start("master", command("master", services["master"]),
              local_env("master", services["master"]))
        health = wait_for(lambda: requests.get(
            f"http://127.0.0.1:{master_port}/api/v1/health", timeout=2).json(), 30,
            "the master")
        assert health["broker"] == "ok", health

        long_running, one_shot = [], []
        for name, service in services.items():
            if name in ("redis", "master"):
                continue
            argv = command(name, service)
            (long_running if argv[1] == "run" else one_shot).append((name, argv, service))
        assert long_running or one_shot

        for name, argv, service in long_running:
            start(name, argv, local_env(name, service))
        for name, argv, service in one_shot:
            result = subprocess.run(argv, env=local_env(name, service), capture_output=True,
                                    text=True, timeout=180)
            assert result.returncode == 0, f"{name}: {result.stderr}"
            assert "is in http" in result.stdout

        auth = ("admin", DEMO_PASSWORD)
        if long_running:
            names = {name for name, _, _ in long_running}
            wait_for(lambda: names <= {w["name"] for w in requests.get(
                f"http://127.0.0.1:{master_port}/api/v1/workers", auth=auth,
                timeout=5).json()["workers"]}, 60, f"workers {names}")
            resp = requests.post(f"http://127.0.0.1:{master_port}/api/v1/builds", auth=auth,
                                 json={"packages": ["hello-farm"]}, timeout=30)
            assert resp.status_code == 202, resp.text

            def done() -> dict[str, Any] | None:
                build = requests.get(resp.json()["url"], auth=auth, timeout=5).json()
                return build if build["status"] in ("success", "failed") else None
            assert wait_for(done, 120, "the build")["status"] == "success"
        packages = requests.get(
            f"http://127.0.0.1:{master_port}/repo/dists/stable/main/binary-amd64/Packages",
            timeout=5).text
        assert "Package: hello-farm" in packages
    finally:
        for proc in reversed(procs):
            stop_process(proc)

"""The compose recipes, run for real: a Docker engine of the tests' own (tests/integration/
dockerd.py), the image built from this tree, and each deployment brought up with
`docker-compose up -d --build` as a deployer would, then driven over its published port.

One engine and one image serve the whole module: the image is built once from a copy of the
tree (`docker build --network host`, the only step that reaches the Debian mirror and PyPI),
and every `up --build` after it takes all its layers from the cache. Containers reach nothing
outside this machine, so the test definitions need nothing beyond the image, and workers build
on their container's own system (`worker.environment: host`, as the recipes say).

Each recipe runs with its own files; the tests add only a compose override of their own that
mounts a test config (the recipe's, with test definitions and, for the fault test, a short
lease) and the test definitions. What each step took is printed at the end of the module.
"""

from __future__ import annotations

import contextlib
import secrets
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.integration.dockerd import (
    ComposeProject,
    DockerEngine,
    EngineUnavailable,
    build_redis_stand_in,
    docker_engine,
    import_base,
    run_in_network,
    source_copy,
)
from tests.integration.farm import PASSWORD, AptClient, Master, free_port, parse_packages, wait_for

IMAGE = "pkgfarm:latest"
CONTAINER_CONFIG = "/etc/pkgfarm/config.yaml"
TEST_DEFINITIONS = "/srv/pkgfarm/test-packages"
FINAL = ("success", "failed", "dep-failed", "cancelled")

#: seconds each step took, printed when the module ends
TIMES: dict[str, float] = {}

pytestmark = pytest.mark.timeout(900)


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        TIMES[what] = round(time.monotonic() - start, 1)


@pytest.fixture(scope="module")
def engine(request: pytest.FixtureRequest) -> Iterator[DockerEngine]:
    with contextlib.ExitStack() as stack:
        try:
            with timed("engine start"):
                eng = stack.enter_context(docker_engine())
        except EngineUnavailable as exc:
            pytest.skip(f"no Docker engine can start here: {exc}")
        yield eng
    # Shown whether or not pytest captures output: the README quotes these figures.
    lines = [f"  {what}: {seconds} s" for what, seconds in TIMES.items()]
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\ncompose recipe timings:\n" + "\n".join(lines), flush=True)


@pytest.fixture(scope="module")
def source(engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tree the images are built from, with the base images and the pkgfarm image built."""
    with timed("base image (import of the cached minbase)"):
        import_base(engine)
    with timed("redis:7 stand-in build"):
        build_redis_stand_in(engine)
    tree = source_copy(tmp_path_factory.mktemp("src"))
    with timed("pkgfarm image build (docker build --network host)"):
        engine.docker("build", "-q", "--network", "host", "-t", IMAGE, str(tree), timeout=900)
    with timed("pkgfarm image build again (all cached)"):
        engine.docker("build", "-q", "-t", IMAGE, str(tree), timeout=300)
    return tree


def test_image_carries_no_build_ca(engine: DockerEngine, source: Path) -> None:
    """The image was built with this machine's whole CA bundle in docker/ca-certificates/, yet
    trusts Debian's CAs only, and keeps nothing of the build's CA set-up."""
    assert (source / "docker/ca-certificates/host-bundle.crt").is_file()
    check = ("test -z \"$(find /usr/local/share/ca-certificates /tmp -mindepth 1)\" && "
             "! grep -rqs build-ca /etc/apt/apt.conf.d && "
             "test \"$(grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt)\" = "
             "\"$(find /usr/share/ca-certificates -name '*.crt' | wc -l)\"")
    result = engine.docker("run", "--rm", "--network", "none", IMAGE, "sh", "-c", check,
                           check=False)
    assert result.returncode == 0, result
    history = engine.docker("history", "--no-trunc", IMAGE).stdout
    assert "ca-certificates" not in history and "PROXY" not in history.upper(), history


# -- helpers -----------------------------------------------------------------------------------


def definition(name: str, arch: str | list[str], seconds: float = 1) -> str:
    """A definition whose program says what it is, on which host it was built, as which user,
    and whether its build reached the master over the network."""
    return yaml.safe_dump({
        "package": {
            "name": name, "version": "1.0", "release": 1, "architecture": arch,
            "description": f"{name}, a compose test package\nBuilt by the compose tests.",
            "maintainer": "pkgfarm tests <tests@example.org>",
        },
        "build": (f"echo 'build of {name} starts'\n"
                  f"sleep {seconds}\n"
                  'net=no; (exec 3<>/dev/tcp/master/8080) 2>/dev/null && net=yes\n'
                  'mkdir -p "$DESTDIR/usr/bin"\n'
                  "printf '#!/bin/sh\\necho \"%s %s built on %s as %s, network %s\"\\n' "
                  '"$PKGFARM_PACKAGE" "$PKGFARM_ARCH" "$(uname -n)" "$(id -u)" "$net" '
                  '> "$DESTDIR/usr/bin/$PKGFARM_PACKAGE"\n'
                  'chmod 0755 "$DESTDIR/usr/bin/$PKGFARM_PACKAGE"\n'),
    }, sort_keys=False)


def write_definitions(folder: Path, defs: dict[str, tuple[str | list[str], float]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (arch, seconds) in defs.items():
        (folder / f"{name}.yaml").write_text(definition(name, arch, seconds))
    return folder


def recipe_test_config(recipe_config: Path, dest: Path, master: dict[str, Any] | None = None,
                worker: dict[str, Any] | None = None) -> Path:
    """The recipe's own config, with the test definitions added and some keys changed."""
    config = yaml.safe_load(recipe_config.read_text())
    config["package_paths"] = [*config.get("package_paths", []), TEST_DEFINITIONS]
    config["master"].update(master or {})
    config["worker"].update(worker or {})
    dest.write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def write_override(path: Path, services: list[str], config: Path, definitions: Path) -> Path:
    """A compose file of the test's own that mounts its config and definitions."""
    mounts = [f"{config}:{CONTAINER_CONFIG}:ro", f"{definitions}:{TEST_DEFINITIONS}:ro"]
    path.write_text(yaml.safe_dump({"services": {s: {"volumes": mounts} for s in services}}))
    return path


def passwords() -> dict[str, str]:
    return {
        "PKGFARM_ADMIN_PASSWORD": PASSWORD,  # what farm.Master's helpers log in with
        "PKGFARM_WORKER_PASSWORD": secrets.token_hex(12),
        "PKGFARM_BUILDER_PASSWORD": secrets.token_hex(12),
        "PKGFARM_REDIS_PASSWORD": secrets.token_hex(16),
    }


def farm_api(url_port: int, tmp: Path, ca_file: Path | None = None) -> Master:
    """farm.Master used for its HTTP helpers only (api, submit, wait_build, index): the master
    itself runs in a container."""
    return Master(tmp / "unused.yaml", url_port, tmp / "unused.log", ca_file=ca_file)


def workers(master: Master) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = master.api("GET", "/api/v1/workers").json()["workers"]
    return result


def hostnames(project: ComposeProject, service: str) -> dict[str, str]:
    """{host name (the worker's name): container id} of a service's running containers."""
    return {project.inspect(c, "{{.Config.Hostname}}"): c for c in project.containers(service)}


def wait_workers(master: Master, expected: set[str], timeout: float = 90) -> list[dict[str, Any]]:
    def listed() -> list[dict[str, Any]] | None:
        live = workers(master)
        return live if {w["name"] for w in live} == expected else None
    result: list[dict[str, Any]] = wait_for(listed, timeout, f"workers {sorted(expected)}",
                                            interval=0.5)
    return result


def assert_published_on_loopback(project: ComposeProject, service: str, port: int) -> None:
    (container,) = project.containers(service)
    mapping = project.engine.docker("port", container).stdout.split()
    bound = [m for m in mapping if m.endswith(f":{port}")]
    assert bound == [f"127.0.0.1:{port}"], mapping


def assert_redis_needs_password(project: ComposeProject, password: str,
                                tls_ca: Path | None = None) -> None:
    """From another container on the deployment's network: without the password Redis refuses
    (NOAUTH); with it, it answers. With TLS, a client in clear gets no answer at all."""
    engine = project.engine
    cli = ["redis-cli", "-h", "redis"]
    volumes: list[str] = []
    if tls_ca is not None:
        volumes = [f"{tls_ca}:/tls/ca.crt:ro"]
        clear = run_in_network(engine, project.network(), "redis:7", [*cli, "ping"])
        assert "PONG" not in clear.stdout and clear.returncode != 0, clear
        cli = [*cli, "--tls", "--cacert", "/tls/ca.crt"]
    refused = run_in_network(engine, project.network(), "redis:7", [*cli, "ping"], volumes)
    assert "NOAUTH" in refused.stdout + refused.stderr, refused
    refused = run_in_network(engine, project.network(), "redis:7", [*cli, "ping"], volumes,
                             env={"REDISCLI_AUTH": "not-" + password})
    assert "WRONGPASS" in refused.stdout + refused.stderr, refused
    allowed = run_in_network(engine, project.network(), "redis:7", [*cli, "ping"], volumes,
                             env={"REDISCLI_AUTH": password})
    assert allowed.stdout.strip() == "PONG", allowed


def install_and_run(master: Master, tmp: Path, names: list[str], arch: str = "amd64",
                    ca_file: Path | None = None) -> dict[str, str]:
    """A stock apt-get on this machine (throwaway state) reads the published repository and
    installs ``names`` into a throwaway root; each installed program is run. {name: output}"""
    apt = AptClient(tmp / "apt", f"deb [trusted=yes] {master.url}/repo stable main", (arch,))
    if ca_file is not None:
        (apt.root / "etc/apt.conf.d/farm-ca.conf").write_text(
            f'Acquire::https::CAInfo "{ca_file}";\n')
    apt.update()
    target = tmp / "root"
    apt.install_into(target, *names)
    status = (target / "var/lib/dpkg/status").read_text()
    outputs = {}
    for name in names:
        assert f"Package: {name}\nStatus: install ok installed" in status, status
        program = target / "usr/bin" / name
        outputs[name] = subprocess.run([str(program)], capture_output=True, text=True,
                                       check=True, timeout=30).stdout.strip()
    return outputs


@contextlib.contextmanager
def deployment(project: ComposeProject, what: str) -> Iterator[None]:
    """Show the project's logs if the test fails; always `down -v`, and check that nothing of
    the project is left in the engine."""
    start = time.monotonic()
    try:
        yield
    except BaseException:
        print(f"--- logs of {project.name} ---\n{project.logs()}")
        raise
    finally:
        with timed(f"{what}: down -v"):
            project.down()
        TIMES[f"{what}: whole test"] = round(time.monotonic() - start, 1)
    assert project.leftovers() == {"containers": [], "volumes": [], "networks": []}


def job_of(build: dict[str, Any], package: str, arch: str) -> dict[str, Any]:
    (job,) = [j for j in build["jobs"] if j["package"] == package and j["arch"] == arch]
    return job


# -- the default deployment --------------------------------------------------------------------


SET = {f"dk-set-{i}": ("all" if i % 2 else "any", 1.5) for i in range(1, 9)}
SLOW = {"dk-slow": ("all", 9.5)}
QUEUED = {f"dk-queued-{i}": ("all", 2) for i in range(1, 7)}


def test_default_compose_four_workers_faults_and_apt(engine: DockerEngine, source: Path,
                                                     tmp_path: Path) -> None:
    """docker-compose.yml with --scale worker=4: four named workers share a set of builds, a
    stock apt installs and runs them; a worker container killed mid-build loses nothing; a
    master restarted with builds queued loses nothing."""
    defs = write_definitions(tmp_path / "defs", {**SET, **SLOW, **QUEUED})
    config = recipe_test_config(source / "recipes/default/config.yaml", tmp_path / "config.yaml",
                         master={"lease_seconds": 8}, worker={"heartbeat_interval": 2})
    override = write_override(tmp_path / "override.yml", ["master", "worker"], config, defs)
    port = free_port()
    env = {**passwords(), "PKGFARM_PUBLISH_ADDRESS": "127.0.0.1", "PKGFARM_PORT": str(port)}
    project = ComposeProject(engine, "pfdefault", [source / "docker-compose.yml", override], env)
    master = farm_api(port, tmp_path)

    with deployment(project, "default"):
        with timed("default: up -d --build --scale worker=4"):
            project.run("up", "-d", "--build", "--scale", "worker=4", timeout=600)
        assert_published_on_loopback(project, "master", port)
        names = hostnames(project, "worker")
        assert len(names) == 4
        with timed("default: four workers listed"):
            wait_workers(master, set(names))
        assert master.api("GET", "/api/v1/health").json()["broker"] == "ok"
        assert_redis_needs_password(project, env["PKGFARM_REDIS_PASSWORD"])

        # A set of eight definitions, spread over the workers; apt installs them and they run.
        with timed("default: a set of 8 built"):
            build = master.wait_build(master.submit(sorted(SET)), timeout=240)
        assert {j["status"] for j in build["jobs"]} == {"success"}, build
        builders = {j["package"]: j["worker"] for j in build["jobs"]}
        assert len(set(builders.values())) >= 2, builders
        assert set(builders.values()) <= set(names)
        with timed("default: apt install of the set"):
            outputs = install_and_run(master, tmp_path / "client", sorted(SET))
        for name, output in outputs.items():
            arch = "all" if SET[name][0] == "all" else "amd64"
            # Built under bubblewrap in the container: as a build user, offline.
            prefix = f"{name} {arch} built on {builders[name]} as "
            assert output.startswith(prefix) and output.endswith(", network no"), output
            assert int(output[len(prefix):].split(",")[0]) >= 64999, output

        # Kill the worker container that holds a running build.
        with timed("default: killed worker, build done as attempt 2"):
            build_id = master.submit(["dk-slow"])

            def running() -> dict[str, Any] | None:
                job = job_of(master.api("GET", f"/api/v1/builds/{build_id}").json(),
                             "dk-slow", "all")
                return job if job["status"] == "building" and job["worker"] else None
            job = wait_for(running, 60, "dk-slow building", interval=0.2)
            assert job["attempt"] == 1
            victim_name = job["worker"]
            victim = names[victim_name]
            # That container, and no other, runs the build's script right now.
            def holders() -> list[str]:
                return [c for c in names.values()
                        if "sleep 9.5" in engine.docker("top", c, "-eo", "pid,args").stdout]
            assert wait_for(holders, 10, "the build's script", interval=0.2) == [victim]
            engine.docker("kill", victim)
            assert project.inspect(victim, "{{.State.Status}}") == "exited"
            build = master.wait_build(build_id, timeout=120)
        job = job_of(build, "dk-slow", "all")
        assert job["status"] == "success" and job["attempt"] == 2, job
        assert job["worker"] != victim_name and job["worker"] in names, job
        published = master.api("GET", "/api/v1/packages?name=dk-slow").json()["packages"]
        assert len(published) == 1, published
        listed = [s for s in parse_packages(master.index("amd64")) if s["Package"] == "dk-slow"]
        assert len(listed) == 1, listed

        # Restart the master container while builds wait in the queue.
        with timed("default: master restarted with builds queued"):
            build_id = master.submit(sorted(QUEUED))
            queued = [j for j in master.api("GET", f"/api/v1/builds/{build_id}").json()["jobs"]
                      if j["status"] == "queued"]
            assert queued
            (master_container,) = project.containers("master")
            engine.docker("restart", "-t", "10", master_container)
            build = master.wait_build(build_id, timeout=240)
        assert {j["status"] for j in build["jobs"]} == {"success"}, build
        for name in QUEUED:
            assert f"Package: {name}\n" in master.index("amd64")


# -- recipes/distributed -----------------------------------------------------------------------


ARCH_SET = {"dk-any": ("any", 1), "dk-all": ("all", 1), "dk-amd64-only": (["amd64"], 1)}


def make_certs(recipe: Path, script: Path, *hosts: str) -> Path:
    subprocess.run([str(script), *hosts], cwd=recipe, check=True, capture_output=True,
                   timeout=120)
    tls = recipe / "tls"
    for name in ("ca.crt", "master.crt", "redis.crt", "private/master.key",
                 "private/redis.key", "private/ca.key"):
        assert (tls / name).is_file(), name
    assert stat.S_IMODE((tls / "private").stat().st_mode) == 0o700
    return tls


def test_distributed_two_architectures_over_tls(engine: DockerEngine, source: Path,
                                                tmp_path: Path) -> None:
    """recipes/distributed: Redis and the master speak TLS only; amd64 jobs wait while only the
    arm64-tagged worker runs, and that worker only ever takes arm64 and `all` jobs."""
    recipe = source / "recipes/distributed"
    tls = make_certs(recipe, recipe / "make-certs.sh", "farm.test")
    defs = write_definitions(tmp_path / "defs", ARCH_SET)
    config = recipe_test_config(recipe / "config.yaml", tmp_path / "config.yaml",
                         worker={"heartbeat_interval": 2})
    override = write_override(tmp_path / "override.yml",
                              ["master", "worker-amd64", "worker-arm64"], config, defs)
    port, redis_port = free_port(), free_port()
    env = {**passwords(), "PKGFARM_PUBLISH_ADDRESS": "127.0.0.1", "PKGFARM_PORT": str(port),
           "PKGFARM_REDIS_PORT": str(redis_port)}
    project = ComposeProject(engine, "pfdistributed", [recipe / "docker-compose.yml", override],
                             env)
    master = farm_api(port, tmp_path, ca_file=tls / "ca.crt")

    with deployment(project, "distributed"):
        with timed("distributed: up -d --build (arm64 worker only)"):
            project.run("up", "-d", "--build", "--scale", "worker-amd64=0", timeout=600)
        assert_published_on_loopback(project, "master", port)
        assert_published_on_loopback(project, "redis", redis_port)
        (arm_name,) = hostnames(project, "worker-arm64")
        (arm,) = wait_workers(master, {arm_name})
        assert arm["architectures"] == ["arm64"] and set(arm["queues"]) == {"build.arm64",
                                                                           "build.all"}
        # HTTPS only, with the farm's CA; Redis in TLS only, and with the password only.
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{master.url}/api/v1/health", timeout=10)
        assert master.api("GET", "/api/v1/health").json()["broker"] == "ok"
        assert_redis_needs_password(project, env["PKGFARM_REDIS_PASSWORD"], tls / "ca.crt")

        build_id = master.submit(sorted(ARCH_SET))

        def arm_side_done() -> dict[str, Any] | None:
            build = master.api("GET", f"/api/v1/builds/{build_id}").json()
            ends = [job_of(build, "dk-any", "arm64"), job_of(build, "dk-all", "all")]
            return build if all(j["status"] in FINAL for j in ends) else None
        build = wait_for(arm_side_done, 90, "the arm64 and all jobs", interval=0.5)
        assert job_of(build, "dk-any", "arm64")["status"] == "success"
        assert job_of(build, "dk-all", "all")["status"] == "success"
        # The arm64-tagged worker is idle now; the amd64 jobs stay queued for an amd64 worker.
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            build = master.api("GET", f"/api/v1/builds/{build_id}").json()
            for package in ("dk-any", "dk-amd64-only"):
                job = job_of(build, package, "amd64")
                assert job["status"] == "queued" and not job["worker"], job
            assert workers(master)[0]["building"] == []
            time.sleep(0.5)

        with timed("distributed: amd64 worker added, its jobs built"):
            project.run("up", "-d", "--no-recreate", "--scale", "worker-amd64=1",
                        "--scale", "worker-arm64=1", timeout=300)
            (amd_name,) = hostnames(project, "worker-amd64")
            build = master.wait_build(build_id, timeout=120)
        assert {j["status"] for j in build["jobs"]} == {"success"}, build
        for package in ("dk-any", "dk-amd64-only"):
            assert job_of(build, package, "amd64")["worker"] == amd_name
        every_job = [j for b in master.api("GET", "/api/v1/builds?limit=100").json()["builds"]
                     for j in master.api("GET", f"/api/v1/builds/{b['id']}").json()["jobs"]]
        taken = {(j["package"], j["arch"]) for j in every_job if j["worker"] == arm_name}
        assert taken and {arch for _, arch in taken} <= {"arm64", "all"}, taken
        assert "Package: dk-any\n" in master.index("arm64")


# -- recipes/distributed-manual ----------------------------------------------------------------


def test_distributed_manual_builder_uploads(engine: DockerEngine, source: Path,
                                            tmp_path: Path) -> None:
    """recipes/distributed-manual: the builder container builds with `worker package-add NAME
    --now`, uploads over HTTPS and exits 0; a stock apt installs the result."""
    recipe = source / "recipes/distributed-manual"
    tls = make_certs(recipe, source / "recipes/distributed/make-certs.sh")
    defs = write_definitions(tmp_path / "defs", {"dk-manual": ("any", 1)})
    config = recipe_test_config(recipe / "config.yaml", tmp_path / "config.yaml")
    override = write_override(tmp_path / "override.yml", ["master", "builder"], config, defs)
    port = free_port()
    env = {**passwords(), "PKGFARM_PUBLISH_ADDRESS": "127.0.0.1", "PKGFARM_PORT": str(port)}
    project = ComposeProject(engine, "pfmanual", [recipe / "docker-compose.yml", override], env)
    master = farm_api(port, tmp_path, ca_file=tls / "ca.crt")

    with deployment(project, "distributed-manual"):
        with timed("distributed-manual: up -d --build, builder done"):
            project.run("up", "-d", "--build", timeout=600)
            (builder,) = project.containers("builder", all_states=True)
            code = engine.docker("wait", builder, timeout=180).stdout.strip()
        logs = engine.docker("logs", builder).stdout
        assert code == "0", logs
        assert "hello-farm_1.0.0-1_all.deb is in https://master:8443/repo/" in logs, logs
        assert_published_on_loopback(project, "master", port)
        assert_redis_needs_password(project, env["PKGFARM_REDIS_PASSWORD"])

        with timed("distributed-manual: compose run builder package-add --now"):
            ran = project.run("run", "--rm", "-T", "builder", "worker", "package-add",
                              "dk-manual", "--now", "--config", CONTAINER_CONFIG, timeout=300)
        assert "dk-manual_1.0-1_amd64.deb is in https://master:8443/repo/" in ran.stdout, ran
        outputs = install_and_run(master, tmp_path / "client", ["dk-manual"],
                                  ca_file=tls / "ca.crt")
        assert outputs["dk-manual"].startswith("dk-manual amd64 built on "), outputs
        published = {p["filename"] for p in master.api("GET", "/api/v1/packages").json()[
            "packages"]}
        assert {"hello-farm_1.0.0-1_all.deb", "dk-manual_1.0-1_amd64.deb"} <= published

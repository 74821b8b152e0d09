"""The ``worker`` command: run a Celery worker, or build one package right here."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import stat
import threading
import time
from pathlib import Path
from typing import Any

import click
import yaml

from common import arch as archmod
from common import cli as clitools
from common import formats as common_formats
from common.config import Environment, Sandbox, Settings, load_settings
from common.definition import find_definition, snapshot
from common.errors import BuildFailed, ConfigError, NotFound, PkgfarmError
from common.logs import setup_logging
from common.messages import Heartbeat
from common.states import ReportStatus, SourceKind
from worker import formats
from worker.client import CertificateError, MasterClient
from worker.tasks import execute_attempt

log = logging.getLogger("pkgfarm.worker")

config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="Config file (default: $PKGFARM_CONFIG).")


@click.group()
@click.version_option(package_name="pkgfarm", prog_name="worker")
def cli() -> None:
    """pkgfarm worker: pulls builds for its architectures and uploads the archives."""


def _with_overrides(settings: Settings, arches: tuple[str, ...], concurrency: int | None,
                    name: str | None) -> Settings:
    changes: dict[str, Any] = {}
    if arches:
        wanted = tuple(a.strip() for spec in arches for a in spec.split(",") if a.strip())
        for a in wanted:
            if not archmod.is_known(a):
                raise click.BadParameter(f"unknown architecture {a!r}", param_hint="--arch")
        changes["architectures"] = wanted
    if concurrency is not None:
        if concurrency < 1:
            raise click.BadParameter("must be at least 1", param_hint="--concurrency")
        changes["concurrency"] = concurrency
    if name:
        changes["name"] = name
    return dataclasses.replace(settings, worker=dataclasses.replace(settings.worker, **changes))


class HeartbeatThread(threading.Thread):
    """Tells the master every few seconds that this worker lives, and what it consumes."""

    def __init__(self, client: MasterClient, beat: Heartbeat, interval: float) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.client, self.beat, self.interval = client, beat, interval
        self.stopping = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.client.heartbeat(self.beat)
            except PkgfarmError as exc:
                log.warning("heartbeat not delivered: %s", exc.message)
            if self.stopping.wait(self.interval):
                return

    def leave(self) -> None:
        self.stopping.set()
        with contextlib.suppress(PkgfarmError):
            self.client.heartbeat(dataclasses.replace(self.beat, leaving=True))


@cli.command()
@config_option
@click.option("--arch", "arches", multiple=True,
              help="Architecture to build (repeat or separate with commas).")
@click.option("--concurrency", type=int, default=None, help="Builds at once.")
@click.option("--name", default=None, help="Name shown in the workers list (default: host).")
@click.option("--loglevel", default="INFO", show_default=True)
def run(config_path: str | None, arches: tuple[str, ...], concurrency: int | None,
        name: str | None, loglevel: str) -> None:
    """Consume build.<arch> for each architecture, plus build.all."""
    from worker.tasks import make_worker_app

    settings = _with_overrides(load_settings(config_path), arches, concurrency, name)
    setup_logging(loglevel)
    check_builds_cannot_read_secrets(settings)
    ws = settings.worker
    worker_name = ws.display_name
    queues = archmod.queues_for_worker(ws.architectures)
    beat = Heartbeat(name=worker_name, architectures=ws.architectures,
                     concurrency=ws.concurrency, queues=tuple(queues))
    client = MasterClient(ws)
    try:
        client.health(retry_for=0)
    except CertificateError:
        raise  # a worker that cannot trust its master does not start
    except PkgfarmError as exc:
        log.warning("the master does not answer yet (%s); waiting for it", exc.message)
    heartbeat = HeartbeatThread(client, beat, ws.heartbeat_interval)
    app = make_worker_app(settings, worker_name)
    log.info("worker %s consuming %s", worker_name, ", ".join(queues))
    heartbeat.start()
    try:
        app.worker_main([
            "worker", "--loglevel", loglevel, "--queues", ",".join(queues),
            "--concurrency", str(ws.concurrency), "--hostname", f"{worker_name}@%h",
            "--pool", "prefork", "--without-gossip", "--without-mingle",
        ])
    finally:
        heartbeat.leave()


#: Keys whose values are secrets wherever they sit in a config file (``*_env`` keys name an
#: environment variable instead, and ``password_hash`` is a hash a stranger could still attack).
SECRET_KEYS = ("password", "password_hash", "secret", "secret_access_key", "token")
#: A URL that carries a password (``redis://:PASSWORD@host``, ``https://user:PASSWORD@host``).
_URL_WITH_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:[^/@\s]+@")


def config_secrets(data: object, where: str = "") -> list[str]:
    """The keys of a config file's data that hold a secret: a password, secret, token or
    private key, or a URL with a password in it (a broker URL, a mirror, a deb-src line)."""
    found: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            name = f"{where}.{key}" if where else str(key)
            if key in SECRET_KEYS and value:
                found.append(name)
            else:
                found += config_secrets(value, name)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += config_secrets(value, f"{where}[{index}]")
    elif isinstance(data, str) and (_URL_WITH_PASSWORD.search(data)
                                    or "PRIVATE KEY" in data):
        found.append(where)
    return found


def check_builds_cannot_read_secrets(settings: Settings) -> None:
    """Refuse to build where a build script could read this worker's secrets.

    With ``sandbox: none`` in host mode a script runs without a sandbox: as the build user
    when the worker is root (so it reads whatever anyone may read: the worker refuses a config
    file anyone may read that holds a secret), and as the worker's own user otherwise (it could
    read the config, the environment and the password: that combination is refused)."""
    ws = settings.worker
    if ws.environment != Environment.HOST or ws.sandbox != Sandbox.NONE:
        return
    if os.geteuid() != 0:
        raise ConfigError("worker.sandbox is none and this worker does not run as root: build "
                          "scripts would run as this worker's own user and could read its "
                          "config, environment and password. Run the worker as root (scripts "
                          "then run as worker.build_uid), or use sandbox: bwrap or "
                          "environment: clean", key="worker.sandbox")
    path = settings.config_file
    if not path or not os.stat(path).st_mode & stat.S_IROTH:
        return
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return
    secrets = config_secrets(data)
    if secrets:
        raise ConfigError(f"{path} holds secrets ({', '.join(secrets)}) and anyone may read "
                          "it, build scripts included (worker.sandbox is none): chmod o-r it, "
                          "or give them in the environment (PKGFARM_WORKER_PASSWORD, …)",
                          key=secrets[0])


def _local_arch(settings: Settings, definition_arch: tuple[str, ...] | str,
                requested: str | None) -> str:
    """The architecture a local build makes: ``all``, the requested one, or this worker's."""
    if definition_arch == archmod.ALL:
        return archmod.ALL
    mine = settings.worker.architectures
    allowed = list(mine) if definition_arch == archmod.ANY else list(definition_arch)
    if requested:
        if requested not in allowed:
            raise BuildFailed(f"the package does not build for {requested} "
                              f"(it builds for {', '.join(allowed)})")
        return requested
    candidates = [a for a in allowed if a in mine]
    if not candidates:
        raise BuildFailed(f"this worker builds {', '.join(mine)}; the package builds only for "
                          f"{', '.join(allowed)} (choose one with --arch)")
    return candidates[0]


@cli.command("package-add")
@click.argument("name")
@click.option("--now", is_flag=True, help="Build here, upload, and wait for the index.")
@click.option("--arch", default=None, help="Architecture to build for.")
@click.option("--format", "formats_wanted", multiple=True, metavar="FORMAT",
              help="With --now: make only this package format (deb, rpm, pacman; may be "
                   "given more than once). Default: every format the repository serves and "
                   "the definition allows.")
@config_option
def package_add(name: str, now: bool, arch: str | None, formats_wanted: tuple[str, ...],
                config_path: str | None) -> None:
    """Build NAME here and publish it (--now), or ask the master to queue it."""
    settings = load_settings(config_path)
    setup_logging("WARNING")
    client = MasterClient(settings.worker, retry_for=120)
    if formats_wanted and not now:
        raise click.UsageError("--format narrows a build made here: use it with --now "
                               "(a queued build makes every format the repository serves)")
    for wanted in formats_wanted:
        common_formats.get(wanted)  # the error for an unknown name
    if now:
        check_builds_cannot_read_secrets(settings)
    if not now:
        build = client.queue_build([name], arch)
        click.echo(f"queued {name} as build {build['id']}", err=True)
        click.echo(build["id"])
        return
    repo = client.health()["repository"]
    served = list(repo.get("formats") or [common_formats.BUILD_HOST])
    for wanted in formats_wanted:
        if wanted not in served:
            raise BuildFailed(f"the repository does not serve {wanted} (it serves "
                              f"{', '.join(served)})")
    try:
        definition = find_definition(name, settings.package_paths)
    except NotFound as missing:
        definition, not_defined = None, missing
    if definition is not None:
        targets = [_local_arch(settings, definition.architecture, arch)]
        package = definition.name
        made = definition.build_formats(formats_wanted or served)
        if not made:
            raise BuildFailed(f"{package} is made only as {', '.join(definition.formats or ())}"
                              f"; asked for {', '.join(formats_wanted or served)}")
        for fmt_name in made:
            definition.check_format(common_formats.get(fmt_name))
        versions = [(f, common_formats.get(f).full_version(definition.version,
                                                           definition.release)) for f in made]
        data, kind = snapshot(definition), SourceKind.DEFINITION
    else:
        # No YAML definition: a source package of a format's own kind (common.formats).
        state = Path(settings.worker.work_dir) / "lookup"
        try:
            found = common_formats.resolve_source(name, settings, state, repo["architectures"],
                                                  arch)
        except NotFound as none:
            raise NotFound(f"{not_defined.message}; and {none.message}", package=name) from None
        if found is None:
            raise not_defined
        fmt, plan = found
        what = fmt.source_kinds[plan.kind]
        mine = set(settings.worker.architectures)
        targets = [a for a in plan.arches if a == archmod.ALL or a in mine]
        if not targets:
            raise BuildFailed(f"{plan.name} builds for {', '.join(plan.arches) or 'nothing'} "
                              f"here; this worker builds {', '.join(sorted(mine))}")
        if formats_wanted and fmt.name not in formats_wanted:
            raise BuildFailed(f"{plan.name} is a {what}: it is made as {fmt.name} only")
        others = [f for f in served if f != fmt.name]
        if others and not formats_wanted:
            click.echo(f"note: {plan.name} is a {what}: it is built as {fmt.name} only, not as "
                       f"{', '.join(others)}", err=True)
        package, data = plan.name, plan.snapshot
        versions = [(fmt.name, plan.version)]
        kind = plan.kind
    for fmt_name, version in versions:
        for target in targets:
            _build_now(settings, client, repo, package, version, target, data, fmt_name, kind)


def _build_now(settings: Settings, client: MasterClient, repo: dict[str, Any], package: str,
               version: str, target: str, data: bytes, fmt: str, kind: SourceKind) -> None:
    """One local build: recorded by the master, built here, published, found in the index."""
    assignment = client.create_local_job(package, version, target,
                                         settings.worker.display_name, fmt, kind.value)
    started = time.monotonic()

    def say(message: str) -> None:
        """Each step as it happens (fetch, build dependencies, build, upload, publish)."""
        click.echo(f"[{time.monotonic() - started:6.1f}s] {message}", err=True)

    say(f"building {package} {version} for {target} as build {assignment.build_id}")
    outcome = execute_attempt(settings, client, assignment, data, say=say)
    if outcome.status != ReportStatus.SUCCESS:
        raise PkgfarmError(f"{outcome.error} (log: {settings.worker.master_url.rstrip('/')}"
                           f"/api/v1/builds/{assignment.build_id}/packages/{package}/log)")
    builder = formats.get(fmt)
    for filename in outcome.files:
        try:
            builder.format.parse_archive_filename(filename)
        except ValueError:
            continue  # a by-product (.buildinfo), kept with the build
        say(f"publishing: waiting for the {repo['suite']}/{repo['component']} {fmt} index to "
            f"list {filename}")
        if not builder.index_lists(client, repo, filename):
            raise PkgfarmError(f"{filename} was uploaded but the {fmt} index of "
                               f"{repo['suite']}/{repo['component']} does not list it "
                               "(a newer version may be published)")
        where = (repo.get("formats") or {}).get(fmt, {}).get("url", repo["url"])
        click.echo(f"{filename} is in {where} {repo['suite']} {repo['component']}")


def main() -> None:
    clitools.run(cli, "worker")

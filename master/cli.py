"""The ``master`` command: serve, make user entries, rebuild the index; and the client
commands of master.client_cli."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml
from werkzeug.security import generate_password_hash

from common import cli as clitools
from common.config import ROLES, Settings, is_loopback, load_settings
from common.errors import ConfigError
from common.logs import setup_logging
from master.background import elsewhere, spawn
from master.client_cli import register as register_client_commands
from master.usercli import register as register_user_commands

log = logging.getLogger("pkgfarm.master")

#: How often the master re-queues expired leases and sends what has not reached the broker.
HOUSEKEEPING_INTERVAL = 2.0
#: Connections each gunicorn process serves at once.
WORKER_CONNECTIONS = 2000

config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="Config file (default: $PKGFARM_CONFIG).")


def _settings(config_path: str | None) -> Settings:
    return load_settings(config_path)


@click.group()
@click.version_option(package_name="pkgfarm", prog_name="master")
def cli() -> None:
    """pkgfarm master: the API, the queue's producer and the repository, in every package
    format the farm serves; and, through its API, the farm's builds, workers, queues and
    events."""


# status, builds, build, restart, cancel, package-add, logs, workers, queues, events, ...
register_client_commands(cli, config_option)
# users, user-create, user-update, user-delete, tokens, token-create, token-delete
register_user_commands(cli, config_option)


@cli.command()
@config_option
def serve(config_path: str | None) -> None:
    """Run the master under gunicorn (and its private Redis when no broker_url is set)."""
    from master import metricsdir

    settings = _settings(config_path)
    setup_logging()
    Path(settings.master.data_dir).mkdir(parents=True, exist_ok=True)
    # Before anything imports prometheus-client: every process counts into this folder.
    metricsdir.prepare(settings.master.data_dir)

    from gunicorn.app.base import BaseApplication

    from master import streams
    from master.app import create_app
    from master.broker import EmbeddedRedis
    from master.services import Services

    embedded = None
    if not settings.broker_url:
        embedded = EmbeddedRedis(settings.embedded_broker_socket)
        embedded.start()
    services = Services.build(settings)
    _check_storage(services.repository.storage)
    from master.metrics import scrape_token

    scrape_token(settings)  # a token variable named but unset stops the start, clearly
    from master.webhooks import Dispatcher

    dispatcher = Dispatcher(settings, services.store)  # an unset secret_env stops it too
    dispatcher.start_cursor()
    # Nobody could renew a lease while the master was away: give running attempts a fresh one.
    services.store.jobs.extend_all_leases(settings.master.lease_seconds)
    services.repository.discard_partial_uploads()
    # Every start renders the index afresh: new settings (suites, architectures, a signing key)
    # take effect, and an index a crash left half-written is made whole.
    services.repository.rebuild_index(full=True)
    # Before the first request: set the broker marker (or find it gone and send queued jobs
    # again), so a build submitted in the first seconds is not taken for a lost one.
    services.scheduler.tick()
    if not settings.master.users:
        log.warning("no users are configured: nobody can queue builds or upload "
                    "(add entries made by `master user-add`)")
    warning = tls_warning(settings)
    if warning:
        log.warning("%s", warning)
    stop = threading.Event()
    from master.web.data import QueueSampler

    sampler = QueueSampler(services)

    arbiter = os.getpid()
    ticking = threading.Lock()  # held while housekeeping works (it may sign an index)

    def housekeeping() -> None:
        while not stop.wait(HOUSEKEEPING_INTERVAL):
            if elsewhere(arbiter):
                return  # a copy in a gunicorn worker process: the arbiter does it
            with ticking:
                try:
                    services.scheduler.tick()
                    sampler.tick()  # the dashboard's queue-length chart
                except Exception:
                    log.exception("housekeeping failed")

    def background(_server: Any) -> None:
        spawn(housekeeping, name="housekeeping")
        # Webhook deliveries go out from the arbiter, never from a request.
        spawn(dispatcher.run, stop, name="webhooks")

    class Server(BaseApplication):
        def load_config(self) -> None:
            options: dict[str, Any] = {
                "bind": settings.master.bind,
                "workers": settings.master.processes,
                # Event-loop processes (gevent): a slow or idle connection, a followed log or an
                # event stream costs a greenlet, not one of a few threads, so slow clients
                # cannot starve the API.
                "worker_class": "gevent",
                "worker_connections": WORKER_CONNECTIONS,
                "timeout": 300,
                "graceful_timeout": 30,
                "accesslog": "-",
                "access_log_format": '%(h)s %(u)s "%(r)s" %(s)s %(b)s %(M)sms',
                "when_ready": background,
                "child_exit": lambda _server, worker: metricsdir.process_exited(worker.pid),
                # Streams (events, followed logs) watch their process's worker, so a stop
                # ends them at once instead of waiting graceful_timeout for them.
                "post_worker_init": lambda worker: streams.attach(worker),
            }
            if settings.master.tls:
                options["certfile"] = settings.master.tls_cert
                options["keyfile"] = settings.master.tls_key
            # gunicorn 23+ opens a control socket in $HOME; two masters on one host would
            # fight over it, and pkgfarm does not use it.
            if "control_socket_disable" in self.cfg.settings:
                options["control_socket_disable"] = True
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Callable[..., Any]:
            setup_logging()
            return create_app(settings)

    try:
        Server().run()
    finally:
        stop.set()
        # gunicorn's worker processes leave through here too (their SystemExit); what follows
        # is the arbiter's, once its workers are gone.
        if not elsewhere(arbiter):
            # A tick under way ends first: it may be signing, which would start the agent
            # again.
            ticking.acquire(timeout=60)
            if embedded is not None:
                embedded.stop()
            if services.repository.signer is not None:
                # gpg started an agent for the master's keyring; it goes with the master.
                subprocess.run(["gpgconf", "--homedir", str(services.repository.signer.home),
                                "--kill", "all"], capture_output=True)


def tls_warning(settings: Settings) -> str | None:
    """What to warn of at start when the master listens beyond this machine in clear."""
    if settings.master.tls or is_loopback(settings.master.bind_host):
        return None
    return (f"the master listens on {settings.master.bind} without TLS: passwords and tokens "
            "cross the network in clear; set master.tls_cert and master.tls_key, or put a "
            "TLS proxy in front of it")


def _check_storage(storage: object) -> None:
    from master.storage import S3Storage

    if isinstance(storage, S3Storage):
        try:
            storage.check()
        except OSError as exc:
            raise ConfigError(f"storage: {exc}", key="storage.bucket") from exc


@cli.command("user-add")
@click.argument("name")
@click.option("--role", "roles", multiple=True, required=True,
              help=f"One of {', '.join(ROLES)}; repeat or separate with commas.")
def user_add(name: str, roles: tuple[str, ...]) -> None:
    """Print a config entry for user NAME (the password is read from a prompt or stdin)."""
    wanted = [r.strip() for spec in roles for r in spec.split(",") if r.strip()]
    for role in wanted:
        if role not in ROLES:
            raise click.BadParameter(f"unknown role {role!r} (known: {', '.join(ROLES)})",
                                     param_hint="--role")
    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise click.UsageError("the password is empty")
    entry = {"master": {"users": {name: {"password_hash": generate_password_hash(password),
                                         "roles": wanted}}}}
    click.echo("# add under master.users in the config file:")
    click.echo(yaml.safe_dump(entry, default_flow_style=None, sort_keys=False).rstrip())


@cli.command("repo-index")
@click.option("--full", is_flag=True, help="Render every index group again (recovery).")
@config_option
def repo_index(full: bool, config_path: str | None) -> None:
    """Rewrite the repository index from the recorded packages."""
    from master.services import Services

    services = Services.build(_settings(config_path))
    services.repository.rebuild_index(full=full)
    click.echo(f"index written for {', '.join(services.settings.repository.all_suites)}")


@cli.command("repo-migrate")
@click.option("--to", "target", type=click.Choice(["s3", "local"]), required=True,
              help="s3: copy data_dir/repo into the bucket of the config's storage section; "
                   "local: the other way.")
@config_option
def repo_migrate(target: str, config_path: str | None) -> None:
    """Copy the whole repository between the local disk and S3 (stop the master first)."""
    from master.migrate import migrate
    from master.storage import LocalStorage, storage_from_settings

    settings = _settings(config_path)
    if settings.storage.backend != "s3":
        raise click.ClickException("the config's storage section must name the S3 bucket "
                                   "(storage: {backend: s3, bucket: …})")
    local = LocalStorage(Path(settings.master.data_dir) / "repo")
    bucket = storage_from_settings(settings)
    source, dest = (local, bucket) if target == "s3" else (bucket, local)
    copied = migrate(source, dest, sys.stderr)
    click.echo(f"{copied} file(s) copied to {target}")


@cli.command("key-generate")
@click.option("--output", type=click.Path(dir_okay=False), required=True,
              help="Where to write the secret key (ASCII armour, mode 0600).")
@click.option("--name", default="pkgfarm repository signing key", show_default=True)
@click.option("--email", default="pkgfarm@localhost", show_default=True)
def key_generate(output: str, name: str, email: str) -> None:
    """Make a repository signing key; prints its fingerprint and the config line."""
    import os

    from master.signing import generate_key

    path = Path(output)
    if path.exists():
        raise click.ClickException(f"{path} exists; not overwriting a key")
    fingerprint, secret = generate_key(name, email)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret)
    click.echo(f"fingerprint: {fingerprint}", err=True)
    click.echo("# add to the config file:")
    click.echo(f"repository:\n  signing_key: {path.resolve()}")


def main() -> None:
    clitools.run(cli, "master")

"""Settings: one YAML file, then environment overrides, validated once into frozen dataclasses.

Master and worker read the same file format; each uses its own section. Validation walks the
dataclasses below by their type hints, so the schema is written once, here. Any unknown key,
wrong type or bad value raises `ConfigError` naming the key (for example
``master.users.admin.roles``).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from common import arch as archmod
from common.errors import ConfigError

CONFIG_ENV = "PKGFARM_CONFIG"

#: The roles a user or token may hold; ``admin`` may do everything (master.auth).
ADMIN = "admin"
ROLES = ("read", "build", "upload", ADMIN)

#: Environment variables that override one key each (secrets and deployment-specific values).
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "PKGFARM_BROKER_URL": ("broker_url",),
    "PKGFARM_BROKER_CA_FILE": ("broker_ca_file",),
    "PKGFARM_DATA_DIR": ("master", "data_dir"),
    "PKGFARM_BIND": ("master", "bind"),
    "PKGFARM_MASTER_URL": ("worker", "master_url"),
    "PKGFARM_WORKER_NAME": ("worker", "name"),
    "PKGFARM_WORKER_USERNAME": ("worker", "username"),
    "PKGFARM_WORKER_PASSWORD": ("worker", "password"),
    "PKGFARM_CA_FILE": ("worker", "ca_file"),
    "PKGFARM_S3_ACCESS_KEY_ID": ("storage", "access_key_id"),
    "PKGFARM_S3_SECRET_ACCESS_KEY": ("storage", "secret_access_key"),
    "PKGFARM_CLIENT_URL": ("client", "url"),
    "PKGFARM_CLIENT_USER": ("client", "user"),
    "PKGFARM_CLIENT_PASSWORD": ("client", "password"),
    "PKGFARM_CLIENT_TOKEN": ("client", "token"),
}


ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SIZE_RE = re.compile(r"^\s*([0-9]+)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)


class StorageBackend(StrEnum):
    LOCAL = "local"
    S3 = "s3"


class ServeMode(StrEnum):
    """How /repo/ serves files kept in S3."""

    PROXY = "proxy"
    REDIRECT = "redirect"


class Sandbox(StrEnum):
    BWRAP = "bwrap"
    NONE = "none"


class Environment(StrEnum):
    CLEAN = "clean"
    HOST = "host"


class NetworkPolicy(StrEnum):
    """Whether a worker lets a definition that asks for it (``build_network: true``) reach
    the network during its build step; builds are offline otherwise."""

    ALLOW = "allow"
    DENY = "deny"


def parse_size(text: str) -> int:
    """Bytes of a size such as ``512M``, ``8G`` or ``1048576`` (0: no limit)."""
    m = _SIZE_RE.fullmatch(text)
    if not m:
        raise ValueError(f"{text!r} is not a size (a number of bytes, or with K, M, G or T)")
    return int(m[1]) * 1024 ** " KMGT".index((m[2] or " ").upper())


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name of a bind setting) is this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class UserSettings:
    #: a werkzeug hash, as `master user-add` prints it ...
    password_hash: str | None = None
    #: ... or the name of an environment variable that holds the password itself, read by the
    #: master when it starts (containers: the deployer sets it, e.g. in a .env file).
    password_env: str | None = None
    roles: tuple[str, ...] = ("read",)
    #: shell-style patterns (``hello-*``) of the packages this user may ask to build, by
    #: POST /api/v1/builds or as a local build; empty: every package. Admins are not limited.
    packages: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for pattern in self.packages:
            if not pattern or not pattern.isprintable() or len(pattern) > 200:
                raise ValueError(f"{pattern!r} is not a package name pattern", "packages")
        for role in self.roles:
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r} (known: {', '.join(ROLES)})", "roles")
        if (self.password_hash is None) == (self.password_env is None):
            raise ValueError("give exactly one of password_hash and password_env",
                             "password_hash")
        if self.password_hash is not None and ":" not in self.password_hash:
            raise ValueError(
                "must be a werkzeug password hash such as 'scrypt:…' (see `master user-add`)",
                "password_hash",
            )
        if self.password_env is not None and not ENV_NAME_RE.fullmatch(self.password_env):
            raise ValueError("must be the name of an environment variable", "password_env")


#: The event kinds a webhook may subscribe to (the event stream's kinds).
WEBHOOK_EVENTS = ("build.created", "build.finished", "job.queued", "job.started",
                  "job.finished", "upload.accepted", "index.updated", "worker.online",
                  "worker.offline", "worker.drained", "worker.resumed", "queue.paused",
                  "queue.resumed")
_HOOK_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class MetricsSettings:
    """Who may read ``GET /metrics``."""

    #: a role whose holders may scrape with basic auth (admins always may); null: none.
    role: str | None = "read"
    #: the name of an environment variable holding a bearer token for scrapers.
    token_env: str | None = None
    #: true: anyone may read the metrics, without credentials.
    public: bool = False

    def __post_init__(self) -> None:
        if self.role is not None and self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r} (known: {', '.join(ROLES)})", "role")
        if self.token_env is not None and not ENV_NAME_RE.fullmatch(self.token_env):
            raise ValueError("must be the name of an environment variable", "token_env")


@dataclass(frozen=True)
class WebhookSettings:
    """One receiver of signed JSON notifications."""

    name: str
    url: str
    events: tuple[str, ...] = ("build.finished",)
    #: the HMAC key: the name of an environment variable holding it (better) ...
    secret_env: str | None = None
    #: ... or the key itself.
    secret: str | None = None
    #: seconds one delivery may take before it counts as failed.
    timeout: int = 10
    #: deliveries are given up after this many tries.
    max_attempts: int = 12
    #: seconds before the first retry; each further retry waits twice as long (at most an hour).
    backoff: float = 5.0

    def __post_init__(self) -> None:
        if not _HOOK_NAME_RE.fullmatch(self.name):
            raise ValueError("must be 1 to 64 letters, digits, '.', '_' or '-'", "name")
        if not self.url.startswith(("http://", "https://")) or len(self.url) > 2000:
            raise ValueError("must be an http:// or https:// URL", "url")
        if not self.events:
            raise ValueError("must list at least one event", "events")
        for kind in self.events:
            if kind not in WEBHOOK_EVENTS:
                raise ValueError(f"unknown event {kind!r} (known: {', '.join(WEBHOOK_EVENTS)})",
                                 "events")
        if (self.secret is None) == (self.secret_env is None):
            raise ValueError("give exactly one of secret and secret_env", "secret")
        if self.secret is not None and len(self.secret) < 16:
            raise ValueError("must be at least 16 characters", "secret")
        if self.secret_env is not None and not ENV_NAME_RE.fullmatch(self.secret_env):
            raise ValueError("must be the name of an environment variable", "secret_env")
        if not 1 <= self.timeout <= 300:
            raise ValueError("must be between 1 and 300 seconds", "timeout")
        if not 1 <= self.max_attempts <= 100:
            raise ValueError("must be between 1 and 100", "max_attempts")
        if not 0.1 <= self.backoff <= 3600:
            raise ValueError("must be between 0.1 and 3600 seconds", "backoff")


@dataclass(frozen=True)
class MasterSettings:
    bind: str = "127.0.0.1:8080"
    data_dir: str = "/var/lib/pkgfarm"
    users: dict[str, UserSettings] = field(default_factory=dict)
    #: gunicorn worker processes; uploads are streamed, so a few serve many workers.
    processes: int = 4
    #: largest upload accepted, in bytes (413 above it).
    max_upload_bytes: int = 4 * 1024**3
    #: seconds after its last heartbeat that a worker leaves the workers list.
    worker_ttl: int = 45
    #: seconds a running attempt stays given to its worker without a renewal; then it is
    #: queued again as a new attempt. Workers renew every quarter of it.
    lease_seconds: int = 90
    #: HTTPS: a PEM certificate (chain) and its key; the master serves TLS itself when set.
    tls_cert: str | None = None
    tls_key: str | None = None
    #: the master's address as people and webhook receivers reach it (links in
    #: notifications), e.g. https://farm.example.org; unset: made from ``bind``.
    public_url: str | None = None
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    webhooks: tuple[WebhookSettings, ...] = ()
    #: the dashboard's read-only pages (overview, builds, logs, packages, workers, repository)
    #: answer without a log-in; actions and the API still need one.
    public_pages: bool = False
    #: hours a browser log-in (the session cookie) lasts.
    session_hours: int = 12
    #: seconds the event stream's events are kept (a client may resume within it).
    events_window: int = 7 * 86400

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def bind_host(self) -> str:
        return self.bind.rsplit(":", 1)[0]

    @property
    def base_url(self) -> str:
        """Where links in notifications point: ``public_url``, else the bound address."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"{'https' if self.tls else 'http'}://{self.bind}"

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together", "tls_cert")
        if self.lease_seconds < 2:
            raise ValueError("must be at least 2", "lease_seconds")
        if self.worker_ttl < 1:
            raise ValueError("must be positive", "worker_ttl")
        if ":" not in self.bind:
            raise ValueError("must be HOST:PORT", "bind")
        if self.processes < 1:
            raise ValueError("must be at least 1", "processes")
        if self.max_upload_bytes < 1:
            raise ValueError("must be positive", "max_upload_bytes")
        if self.public_url is not None and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?",
                                                            self.public_url):
            raise ValueError("must be an http:// or https:// URL without query", "public_url")
        names = [hook.name for hook in self.webhooks]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"two webhooks are named {name!r}", f"webhooks[{i}].name")
        if not 1 <= self.session_hours <= 24 * 366:
            raise ValueError("must be between 1 and 8784 (a year)", "session_hours")
        if not 60 <= self.events_window <= 366 * 86400:
            raise ValueError("must be between 60 seconds and 366 days", "events_window")


@dataclass(frozen=True)
class RepositorySettings:
    suite: str = "stable"
    component: str = "main"
    #: what `architecture: any` expands to, and the binary-<arch> indexes served.
    architectures: tuple[str, ...] = ("amd64",)
    origin: str = "pkgfarm"
    label: str = "pkgfarm"
    #: more suites served besides ``suite`` (where builds publish), e.g. [testing]; packages
    #: reach them by promotion.
    suites: tuple[str, ...] = ()
    #: more components besides ``component``.
    components: tuple[str, ...] = ()
    #: an ASCII-armoured secret key (made by `master key-generate`); unset: unsigned indexes.
    signing_key: str | None = None
    #: versions of each package (per architecture) kept in the pool; older ones are removed.
    keep_versions: int = 3
    #: the package formats the farm builds and serves (common.formats: deb, rpm, pacman)
    formats: tuple[str, ...] = ("deb",)

    @property
    def all_suites(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.suite, *self.suites)))

    @property
    def all_components(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.component, *self.components)))

    def __post_init__(self) -> None:
        if self.keep_versions < 1:
            raise ValueError("must be at least 1", "keep_versions")
        for key in ("suites", "components"):
            for value in getattr(self, key):
                if not value or "/" in value or value.startswith(".") or " " in value:
                    raise ValueError(f"{value!r} is not a plain name", key)
        if not self.architectures:
            raise ValueError("must list at least one architecture", "architectures")
        from common import formats as known  # here: common.formats reads settings' types

        if not self.formats:
            raise ValueError("must list at least one package format", "formats")
        if len(set(self.formats)) != len(self.formats):
            raise ValueError("lists a format twice", "formats")
        for f in self.formats:
            if f not in known.FORMATS:
                raise ValueError(f"unknown package format {f!r} (known: "
                                 f"{', '.join(sorted(known.FORMATS))})", "formats")
        for a in self.architectures:
            if not archmod.is_known(a):
                raise ValueError(f"unknown architecture {a!r}", "architectures")
        for key in ("suite", "component"):
            value = getattr(self, key)
            if not value or "/" in value or value.startswith("."):
                raise ValueError("must be a plain name", key)


@dataclass(frozen=True)
class StorageSettings:
    """Where the pool and the published index live: the master's disk, or an S3 bucket."""

    backend: StorageBackend = StorageBackend.LOCAL
    bucket: str | None = None
    #: an S3-compatible endpoint (MinIO, Ceph, moto); unset: AWS itself.
    endpoint_url: str | None = None
    region: str | None = None
    #: a key prefix inside the bucket, such as "debian/"
    prefix: str = ""
    #: credentials; better from the environment (PKGFARM_S3_ACCESS_KEY_ID, …) or boto3's own
    #: configuration (AWS_ACCESS_KEY_ID, instance roles).
    access_key_id: str | None = None
    secret_access_key: str | None = None
    #: how /repo/ serves files from S3: "redirect" (a presigned URL) or "proxy" (through the
    #: master).
    serve: ServeMode = ServeMode.PROXY

    def __post_init__(self) -> None:
        if self.backend == StorageBackend.S3 and not self.bucket:
            raise ValueError("is required when backend is s3", "bucket")


@dataclass(frozen=True)
class LimitSettings:
    """What one build step may use; past a limit the build fails, the worker goes on."""

    #: memory of the build's processes together (a cgroup's memory.max where the worker can
    #: make one, else measured every second), and the address space of each (RLIMIT_AS),
    #: e.g. "8G"; "0": no limit.
    memory: str = "8G"
    #: processes and threads the build user may run at once (RLIMIT_NPROC); 0: no limit.
    processes: int = 4096
    #: what the build's folder and its in-memory /tmp, /var/tmp and /dev/shm may hold, and the
    #: largest single file (RLIMIT_FSIZE); "0": no limit. Measured every second.
    disk: str = "50G"

    def __post_init__(self) -> None:
        for key in ("memory", "disk"):
            try:
                parse_size(getattr(self, key))
            except ValueError as exc:
                raise ValueError(str(exc), key) from None
        if self.processes < 0:
            raise ValueError("must not be negative", "processes")

    @property
    def memory_bytes(self) -> int:
        return parse_size(self.memory)

    @property
    def disk_bytes(self) -> int:
        return parse_size(self.disk)


@dataclass(frozen=True)
class WorkerSettings:
    master_url: str = "http://127.0.0.1:8080"
    username: str = "worker"
    password: str | None = None
    #: the CA bundle (PEM) that the master's HTTPS certificate is checked against, by the
    #: worker, the CLIs and clean roots fetching from the farm's repository; unset: the
    #: system's bundle.
    ca_file: str | None = None
    architectures: tuple[str, ...] = field(default_factory=lambda: (archmod.host_arch(),))
    concurrency: int = 1
    work_dir: str = "/var/tmp/pkgfarm"  # noqa: S108 (a folder of its own, made per build)
    #: the name shown in the workers list; defaults to the host name.
    name: str | None = None
    #: hard limit of one build, in seconds.
    build_timeout: int = 3 * 3600
    #: install missing build_depends with apt-get before a build.
    install_build_depends: bool = True
    #: seconds between heartbeats to the master.
    heartbeat_interval: int = 15
    #: "bwrap": the build script sees the system read-only and only its own folder writable
    #: (bubblewrap, in its own PID namespace); "none": it runs as the worker's user, for
    #: containers that are already disposable.
    sandbox: Sandbox = Sandbox.BWRAP
    #: "clean": every build runs in a fresh root made from a cached base of ``base_suite``
    #: (its build dependencies installed inside it, the machine left as it was); "host": on
    #: this machine (build dependencies installed here), confined by ``sandbox``.
    environment: Environment = Environment.CLEAN
    #: the unprivileged user (and group) id build scripts and dpkg-buildpackage run as when
    #: the worker runs as root; it owns nothing else on the machine.
    build_uid: int = 64999
    #: whether a definition asking for the network during its build step gets it.
    build_network: NetworkPolicy = NetworkPolicy.ALLOW
    limits: LimitSettings = field(default_factory=LimitSettings)
    #: the suite and mirror the clean base is made from (mmdebstrap --variant=buildd).
    base_suite: str = "bookworm"
    base_mirror: str = "http://deb.debian.org/debian"
    #: where bases are cached; default: ``work_dir``/bases.
    base_dir: str | None = None
    #: a base older than this many seconds is made again before the next build.
    base_max_age: int = 7 * 86400

    def __post_init__(self) -> None:
        if not 1000 <= self.build_uid < 2**31:
            raise ValueError("must be an unprivileged id (1000 or more)", "build_uid")
        if self.base_max_age < 0:
            raise ValueError("must not be negative", "base_max_age")
        if not self.master_url.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL", "master_url")
        for a in self.architectures:
            if not archmod.is_known(a):
                raise ValueError(f"unknown architecture {a!r}", "architectures")
        if self.concurrency < 1:
            raise ValueError("must be at least 1", "concurrency")
        if self.build_timeout < 1:
            raise ValueError("must be positive", "build_timeout")
        if self.heartbeat_interval < 1:
            raise ValueError("must be positive", "heartbeat_interval")

    @property
    def display_name(self) -> str:
        return self.name or os.uname().nodename


@dataclass(frozen=True)
class ClientSettings:
    """How the ``master`` command's client commands (status, builds, events, ...) reach the
    master's API: its URL and the credentials of a user of it."""

    url: str = "http://127.0.0.1:8080"
    #: HTTP basic auth ...
    user: str | None = None
    password: str | None = None
    #: ... or an API token (sent as ``Authorization: Bearer``; used instead of the user and
    #: password when both are set, e.g. the token from PKGFARM_CLIENT_TOKEN)
    token: str | None = None
    #: the CA bundle (PEM) the master's HTTPS certificate is checked against; unset: the
    #: system's bundle.
    ca_file: str | None = None

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL", "url")
        if (self.user is None) != (self.password is None):
            raise ValueError("user and password go together", "password" if self.user
                             else "user")
        if self.token is not None and not self.token.strip():
            raise ValueError("must not be empty", "token")


@dataclass(frozen=True)
class Settings:
    #: the Celery broker; unset means the master's private redis-server under data_dir.
    broker_url: str | None = None
    #: for a ``rediss://`` broker: the CA bundle its certificate is checked against (unset: the
    #: system's bundle).
    broker_ca_file: str | None = None
    package_paths: tuple[str, ...] = ()
    #: where Debian source packages are looked up: one-line apt sources such as
    #: "deb-src [signed-by=…] http://deb.debian.org/debian bookworm main"; empty means the
    #: sources this machine's apt already uses, as deb-src.
    debian_sources: tuple[str, ...] = ()
    master: MasterSettings = field(default_factory=MasterSettings)
    repository: RepositorySettings = field(default_factory=RepositorySettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    client: ClientSettings = field(default_factory=ClientSettings)
    #: the file these settings were read from (not a key of it)
    config_file: str | None = field(default=None, metadata={"internal": True})

    def private_paths(self) -> list[Path]:
        """What the farm's own processes read and builds must not: the config file and its
        folder, the master's and the worker's folders, the keys."""
        paths = [self.master.data_dir, self.worker.work_dir, self.worker.base_dir,
                 self.master.tls_key, self.repository.signing_key]
        if self.config_file:
            folder = os.path.dirname(self.config_file)
            paths += [self.config_file] + ([folder] if folder not in ("/", "/etc") else [])
        return [Path(p) for p in dict.fromkeys(p for p in paths if p)]

    @property
    def embedded_broker_socket(self) -> Path:
        return Path(self.master.data_dir) / "redis" / "redis.sock"

    @property
    def effective_broker_url(self) -> str:
        """The broker every process uses: the configured one, or the master's private Redis."""
        if self.broker_url:
            return self.broker_url
        return f"redis+socket://{self.embedded_broker_socket}"


# --------------------------------------------------------------------------------------------
# Loading and validation


def load_settings(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Read the config file (``path``, else ``$PKGFARM_CONFIG``, else none) and the environment."""
    env = os.environ if env is None else env
    path = path or env.get(CONFIG_ENV) or None
    data: Any = {}
    base = Path.cwd()
    if path:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        base = p.resolve().parent
    data = _apply_env(data, env)
    settings = _build(Settings, data, "")
    if path:
        settings = dataclasses.replace(settings, config_file=str(Path(path).resolve()))
    return _resolve_paths(settings, base)


def settings_from_dict(data: Mapping[str, Any], base: Path | None = None) -> Settings:
    """Validate an in-memory mapping (tests and tools); relative paths resolve against ``base``."""
    return _resolve_paths(_build(Settings, dict(data), ""), base or Path.cwd())


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    data = dict(data)
    for var, keys in ENV_OVERRIDES.items():
        if var not in env or env[var] == "":
            continue
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            child = dict(child) if isinstance(child, dict) else {}
            node[key] = child
            node = child
        node[keys[-1]] = env[var]
    return data


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    def absolute(p: str) -> str:
        return str((base / os.path.expanduser(p)).resolve())

    def maybe(p: str | None) -> str | None:
        return None if p is None else absolute(p)

    m, w = settings.master, settings.worker
    master = dataclasses.replace(m, data_dir=absolute(m.data_dir), tls_cert=maybe(m.tls_cert),
                                 tls_key=maybe(m.tls_key))
    worker = dataclasses.replace(
        w, work_dir=absolute(w.work_dir), ca_file=maybe(w.ca_file),
        base_dir=absolute(w.base_dir or os.path.join(w.work_dir, "bases")))
    paths = tuple(absolute(p) for p in settings.package_paths)
    client = dataclasses.replace(settings.client, ca_file=maybe(settings.client.ca_file))
    return dataclasses.replace(settings, master=master, worker=worker, package_paths=paths,
                               broker_ca_file=maybe(settings.broker_ca_file), client=client)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _build(cls: type, data: Any, where: str) -> Any:
    """Turn ``data`` into dataclass ``cls``, naming the first key that does not fit."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: must be a mapping", key=where)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)
              if f.init and not f.metadata.get("internal")}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{_join(where, str(key))}: unknown key (known: {known})",
                              key=_join(where, str(key)))
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], _join(where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(where, name)}: required key is missing",
                              key=_join(where, name))
    try:
        return cls(**kwargs)
    except ValueError as exc:
        message, key = exc.args if len(exc.args) == 2 else (str(exc), "")
        full = _join(where, key) if key else where
        raise ConfigError(f"{full}: {message}", key=full) from None


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: must be a list", key=where)
        return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be a mapping", key=where)
        return {str(k): _convert(args[1], v, _join(where, str(k))) for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            names = " or ".join(str(m.value) for m in hint)
            raise ConfigError(f"{where}: must be {names}", key=where) from None
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: must be true or false", key=where)
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: must be an integer", key=where)
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        raise ConfigError(f"{where}: must be an integer", key=where)
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: must be a number", key=where)
        if isinstance(value, int | float):
            return float(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: must be a number", key=where) from None
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: must be a string", key=where)
    raise ConfigError(f"{where}: unsupported setting type {hint!r}", key=where)

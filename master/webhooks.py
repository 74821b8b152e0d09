"""Signed webhooks: each configured hook gets a JSON POST for the events it names.

The dispatcher reads the event stream (store.events) after a durable cursor and, in ONE
transaction, queues one delivery per event and hook and moves the cursor (master.store
.webhooks), so a request that changes something never waits for a receiver, and an event is
queued exactly once however the master stops. `master serve` runs the dispatcher in its
arbiter process; a lease in the store lets only one master on a data_dir send.

Each delivery is sent with::

    X-Pkgfarm-Delivery:  the delivery's id (the same on every retry of it)
    X-Pkgfarm-Event:     the event kind, e.g. build.finished
    X-Pkgfarm-Timestamp: unix seconds of this try
    X-Pkgfarm-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the hook's secret>

A receiver checks the signature and that the timestamp is recent, so a captured delivery cannot
be replayed later. A try that fails (an error, a time-out, a status other than 2xx) is retried
after ``backoff`` seconds, then twice as long each time (at most an hour), until
``max_attempts`` tries; then the delivery is given up (``failed``). A hook's deliveries for one
build are sent in the order of their events, each only after the one before it was delivered
or given up. Delivery is at least once: a master stopped in the middle of a try sends it again
after its restart (the receiver may drop a delivery id it has seen).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import requests

from common.config import Settings, WebhookSettings
from common.errors import ConfigError
from master.background import spawn
from master.store import Store
from master.store.events import Event
from master.store.webhooks import Delivery, NewDelivery

log = logging.getLogger(__name__)

#: How often the dispatcher looks for new events and due deliveries.
INTERVAL = 0.5
#: The lease that lets one process at a time send.
LEASE = "webhooks"
#: The longest wait between two tries of a delivery.
MAX_BACKOFF = 3600.0
#: Events read per round.
BATCH = 500
#: Kept in the answer of a try, for admins (GET /api/v1/webhooks).
MAX_ERROR = 500
USER_AGENT = "pkgfarm-webhooks/1"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Pkgfarm-Signature value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(secret: str, timestamp: str, body: bytes, signature: str,
           *, now: float | None = None, tolerance: float = 300) -> bool:
    """A receiver's check: the signature is the hook's and the timestamp is recent."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    now = time.time() if now is None else now
    if abs(now - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


def backoff(attempts: int, base: float, cap: float = MAX_BACKOFF) -> float:
    """Seconds to wait after the ``attempts``-th failed try: base, 2 base, 4 base, ... cap."""
    return min(cap, base * 2.0 ** max(0, attempts - 1))


def secrets_of(settings: Settings, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each hook's key: as configured, or read from the environment variable it names
    (ConfigError, naming the key, when that is unset or empty)."""
    env = os.environ if env is None else env
    keys = {}
    for i, hook in enumerate(settings.master.webhooks):
        if hook.secret is not None:
            keys[hook.name] = hook.secret
            continue
        assert hook.secret_env is not None
        value = env.get(hook.secret_env, "")
        if not value:
            raise ConfigError(f"master.webhooks[{i}].secret_env: the environment variable "
                              f"{hook.secret_env} is not set",
                              key=f"master.webhooks[{i}].secret_env")
        keys[hook.name] = value
    return keys


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


class Dispatcher:
    def __init__(self, settings: Settings, store: Store,
                 env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.hooks: dict[str, WebhookSettings] = {h.name: h for h in settings.master.webhooks}
        self.keys = secrets_of(settings, env)
        self.base = settings.master.base_url
        self._tag = uuid.uuid4().hex[:8]
        longest = max((h.timeout for h in self.hooks.values()), default=10)
        self.lease_seconds = float(longest + 30)
        self.sessions = {name: requests.Session() for name in self.hooks}
        self._last_prune = 0.0
        self._lease_until = 0.0
        self._pid = os.getpid()
        self._lock = threading.Lock()

    @property
    def owner(self) -> str:
        """Who holds the lease: this process (a forked copy of the loop is someone else)."""
        return f"{socket.gethostname()}:{os.getpid()}:{self._tag}"

    # -- events to deliveries --------------------------------------------------------------

    def start_cursor(self) -> None:
        """On the very first start (cursor 0), begin after the events already kept: a new
        hook is not sent the farm's history."""
        hooks = self.store.webhooks
        if hooks.cursor() == 0:
            newest = self.store.events.newest_id()
            if newest:
                hooks.enqueue(0, newest, [])

    def fan_out(self) -> int:
        """Queue a delivery per hook for each new event; how many events were read."""
        cursor = self.store.webhooks.cursor()
        events = self.store.events.after(cursor, limit=BATCH)
        if not events:
            return 0
        deliveries = []
        for event in events:
            for hook in self.hooks.values():
                if event.kind in hook.events:
                    delivery = str(uuid.uuid4())
                    body = json.dumps(self.body(event, delivery), sort_keys=False,
                                      separators=(",", ":"))
                    deliveries.append(NewDelivery(delivery, hook.name, event.id, event.kind,
                                                  event.build_id, body))
        if not self.store.webhooks.enqueue(cursor, events[-1].id, deliveries):
            return 0  # another dispatcher moved the cursor: it queued these
        return len(events)

    def body(self, event: Event, delivery: str) -> dict[str, Any]:
        body: dict[str, Any] = {"delivery": delivery, "event": event.kind,
                                "event_id": event.id, "at": _iso(event.at)}
        if event.kind == "build.finished" and event.build_id is not None:
            body["build"] = self.build_summary(event)
            body["text"] = self.build_text(body["build"])
        else:
            body["data"] = event.to_json()
            if event.build_id is not None:
                body["build_url"] = f"{self.base}/builds/{event.build_id}"
                data = event.data
                if event.kind.startswith("job.") and "format" in data:
                    body["log_url"] = self.log_url(event.build_id, data["package"],
                                                   data["arch"], data["format"])
        return body

    def log_url(self, build_id: int, package: str, arch: str, fmt: str) -> str:
        """The API address of one job's build log: the architecture and the format name the
        job, so the link answers whatever else the build made of that package."""
        return (f"{self.base}/api/v1/builds/{build_id}/packages/{quote(package, safe='')}"
                f"/log?arch={quote(arch, safe='')}&format={quote(fmt, safe='')}")

    def build_summary(self, event: Event) -> dict[str, Any]:
        build_id = event.build_id
        assert build_id is not None
        found = self.store.jobs.get_build(build_id)
        summary: dict[str, Any] = {
            "id": build_id,
            "state": event.data.get("state"),
            "url": f"{self.base}/builds/{build_id}",
            "api_url": f"{self.base}/api/v1/builds/{build_id}",
        }
        if found is None:
            return summary
        build, jobs = found
        summary["packages"] = list(build.packages)
        summary["requested_by"] = build.requested_by
        summary["jobs"] = []
        summary["failed"] = []
        for job in jobs:
            log_url = self.log_url(build_id, job.package, job.arch, job.format)
            duration = (round(job.finished_at - job.started_at, 3)
                        if job.finished_at is not None and job.started_at is not None
                        else None)
            entry = {"id": job.id, "package": job.package, "version": job.version,
                     "arch": job.arch, "format": job.format, "state": job.state.value,
                     "attempt": job.attempt,
                     "worker": job.worker, "error": job.error, "duration": duration,
                     "log_url": log_url}
            summary["jobs"].append(entry)
            if job.state.value != "success":
                first = (job.error or "").strip().splitlines()
                summary["failed"].append({"package": job.package, "arch": job.arch,
                                          "format": job.format, "state": job.state.value,
                                          "error": first[0] if first else None,
                                          "log_url": log_url})
        return summary

    @staticmethod
    def build_text(build: dict[str, Any]) -> str:
        """One line for people (chat receivers show it as it is)."""
        text = f"pkgfarm build {build['id']} {build.get('state')}"
        packages = build.get("packages")
        if packages:
            text += f" ({', '.join(packages)})"
        for failed in build.get("failed", [])[:5]:
            text += (f"; {failed['package']} ({failed['arch']}, {failed['format']}) "
                     f"{failed['state']}")
            if failed.get("error"):
                text += f": {failed['error'][:200]}"
        return f"{text} {build['url']}"

    # -- sending -----------------------------------------------------------------------------

    def send_due(self, hook: str | None = None) -> int:
        """Try every delivery that is due (of one hook, or all), oldest first; how many
        were tried."""
        tried = 0
        while True:
            due = self.store.webhooks.due(time.time(), hook=hook)
            if not due:
                return tried
            for delivery in due:
                if not self._hold_lease():
                    return tried  # another process took over
                self.send(delivery)
                tried += 1

    def send(self, delivery: Delivery) -> bool:
        hook = self.hooks.get(delivery.hook)
        if hook is None:
            self.store.webhooks.record(delivery.seq, delivered=False, status=None,
                                       error="the hook is no longer configured",
                                       next_try=None)
            return False
        body = delivery.body.encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Pkgfarm-Delivery": delivery.delivery,
            "X-Pkgfarm-Event": delivery.kind,
            "X-Pkgfarm-Timestamp": str(timestamp),
            "X-Pkgfarm-Signature": sign(self.keys[hook.name], timestamp, body),
        }
        status: int | None = None
        error: str | None = None
        try:
            resp = self.sessions[hook.name].post(hook.url, data=body, headers=headers,
                                     timeout=hook.timeout, allow_redirects=False)
            status = resp.status_code
            resp.close()
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except requests.Timeout:
            error = f"no answer within {hook.timeout} s"
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR]
        if os.getpid() != self._pid:
            return False  # a forked copy of the loop: the process that sent records it
        attempts = delivery.attempts + 1
        if error is None:
            self.store.webhooks.record(delivery.seq, delivered=True, status=status, error=None,
                                       next_try=None)
            log.info("webhook %s: delivered %s %s (try %d)", hook.name, delivery.kind,
                     delivery.delivery, attempts)
            return True
        next_try = (time.time() + backoff(attempts, hook.backoff)
                    if attempts < hook.max_attempts else None)
        self.store.webhooks.record(delivery.seq, delivered=False, status=status, error=error,
                                   next_try=next_try)
        if next_try is None:
            log.warning("webhook %s: gave up %s %s after %d tries: %s", hook.name,
                        delivery.kind, delivery.delivery, attempts, error)
        else:
            log.info("webhook %s: %s %s failed (try %d): %s; again in %.1f s", hook.name,
                     delivery.kind, delivery.delivery, attempts, error, next_try - time.time())
        return False

    # -- the loop ----------------------------------------------------------------------------

    def _hold_lease(self) -> bool:
        """Whether this process may send; the lease is renewed when half of it is left (a
        write every few seconds, not every round)."""
        with self._lock:
            now = time.time()
            if now < self._lease_until - self.lease_seconds / 2:
                return True
            if self.store.webhooks.take_lease(LEASE, self.owner, self.lease_seconds):
                self._lease_until = now + self.lease_seconds
                return True
            self._lease_until = 0.0
            return False

    def round(self) -> None:
        """Queue what new events call for, and forget old finished deliveries."""
        # The cursor moves even without hooks (cheap: a write only when there are events),
        # so a hook added later starts from its own time, not from the past.
        while self.fan_out():
            pass
        now = time.time()
        if self.hooks and now - self._last_prune > 600 and self._hold_lease():
            self._last_prune = now
            self.store.webhooks.prune(now - self.settings.master.events_window)

    def run(self, stop: threading.Event) -> None:
        """Dispatch until ``stop`` is set (master serve's background loop): this loop queues,
        one sender per hook sends, so a slow receiver delays only its own deliveries.

        gunicorn forks its workers from the process running this loop; with gevent a fork
        keeps the loops' greenlets alive in the child (see master.background). The copies
        notice they are elsewhere and end, so only the process that started them sends.
        """
        pid = self._pid = os.getpid()
        for name in self.hooks:
            spawn(self._sender, name, stop, pid, name=f"webhook-{name}")
        try:
            while not stop.wait(INTERVAL):
                if os.getpid() != pid:
                    return
                try:
                    self.round()
                except Exception:
                    log.exception("webhook dispatch failed")
        finally:
            if os.getpid() == pid:
                try:
                    if self._lease_until:
                        self.store.webhooks.release_lease(LEASE, self.owner)
                except Exception:
                    log.debug("webhook lease not released", exc_info=True)

    def _sender(self, hook: str, stop: threading.Event, pid: int) -> None:
        while not stop.wait(INTERVAL):
            if os.getpid() != pid:
                return
            try:
                if self._hold_lease():
                    self.send_due(hook)
            except Exception:
                log.exception("webhook %s: sending failed", hook)

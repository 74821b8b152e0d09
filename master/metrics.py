"""Prometheus metrics of the master, served at ``GET /metrics``.

Two sources, so that every gunicorn process answers the same:

- State and what the farm did come from the store at each scrape (`StoreCollector`): jobs by
  state, builds and jobs finished by outcome, job duration and queue wait by architecture, lease
  expiries and broker re-sends (counted by the store in the transaction of each change, see
  master.store.counters), workers online, webhook deliveries; queue lengths come from Redis.
- What one process sees (HTTP requests, uploads, index updates) is counted in that process with
  prometheus-client's multiprocess mode: `master serve` points PROMETHEUS_MULTIPROC_DIR at a
  folder it empties at start (master.metricsdir), and a scrape of any process adds up all of
  them. Without it (the CLI, tests calling the app directly) they are this process's own.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from flask import Flask, g, request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from common.config import Settings
from common.errors import ConfigError
from common.states import JobState
from master.metricsdir import ENV
from master.store import counters

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# No ``*_created`` series: the multiprocess mode has none, so a single process has none either.
disable_created_metrics()

# -- what each process counts (multiprocess mode adds them up) ---------------------------------

HTTP_REQUESTS = Counter(
    "pkgfarm_http_requests", "HTTP requests answered, by route (Flask endpoint), method and "
    "status", ["endpoint", "method", "status"], registry=None)
HTTP_DURATION = Histogram(
    "pkgfarm_http_request_duration_seconds", "Time to answer an HTTP request (until the "
    "response starts), by route", ["endpoint"], registry=None,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
UPLOADS = Counter(
    "pkgfarm_uploads", "Uploads received, by package format (unknown: the file name is no "
    "served format's) and result (accepted, present: the same archive was already "
    "published, refused)", ["format", "result"], registry=None)
UPLOAD_BYTES = Counter(
    "pkgfarm_upload_bytes", "Bytes of the uploads received, by package format and result",
    ["format", "result"], registry=None)
#: The format label of an upload whose file name no served format reads.
UNKNOWN_FORMAT = "unknown"
INDEX_UPDATE = Histogram(
    "pkgfarm_index_update_duration_seconds", "Time to write the repository index (every "
    "format, suite and architecture)", registry=None,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0))

PROCESS_METRICS = (HTTP_REQUESTS, HTTP_DURATION, UPLOADS, UPLOAD_BYTES, INDEX_UPDATE)


def index_updated(seconds: float) -> None:
    INDEX_UPDATE.observe(seconds)


def instrument(app: Flask) -> None:
    """Count every request the app answers."""

    @app.before_request
    def started() -> None:
        g.pkgfarm_started = time.monotonic()

    @app.after_request
    def answered(response: Any) -> Any:
        endpoint = request.endpoint or "unmatched"
        try:
            HTTP_REQUESTS.labels(endpoint, request.method, str(response.status_code)).inc()
            started_at = g.get("pkgfarm_started")
            if started_at is not None:
                HTTP_DURATION.labels(endpoint).observe(time.monotonic() - started_at)
            if endpoint == "uploads.upload":
                status = response.status_code
                result = ("accepted" if status == 201 else "present" if status == 200
                          else "refused")
                size = g.get("pkgfarm_upload_size")
                if size is None:
                    size = request.content_length or 0
                fmt = g.get("pkgfarm_upload_format") or UNKNOWN_FORMAT
                UPLOADS.labels(fmt, result).inc()
                UPLOAD_BYTES.labels(fmt, result).inc(size)
        except Exception:  # a metric must never break an answer
            log.exception("counting a request failed")
        return response


# -- access --------------------------------------------------------------------------------


def scrape_token(settings: Settings, env: dict[str, str] | None = None) -> str | None:
    """The bearer token scrapers may use, read from the environment when the master starts."""
    name = settings.master.metrics.token_env
    if name is None:
        return None
    value = (os.environ if env is None else env).get(name, "")
    if not value:
        raise ConfigError(f"master.metrics.token_env: the environment variable {name} is not "
                          "set", key="master.metrics.token_env")
    return value


def bearer_matches(header: str, token: str | None) -> bool:
    scheme, _, value = header.partition(" ")
    if token is None or scheme.lower() != "bearer" or not value.strip():
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


# -- what the store and Redis say, at each scrape ------------------------------------------

_OUTCOMES = (JobState.SUCCESS, JobState.FAILED, JobState.DEP_FAILED, JobState.CANCELLED)
_FINAL_SPEC: dict[str, tuple[str, str, tuple[str, ...]]] = {
    counters.JOBS_FINISHED: ("pkgfarm_jobs_finished", "Jobs that reached a final state, by "
                             "architecture, package format and outcome",
                             ("arch", "format", "outcome")),
    counters.BUILDS_FINISHED: ("pkgfarm_builds_finished", "Builds whose last job reached a "
                               "final state, by outcome (a restarted build counts again when "
                               "it ends again)", ("outcome",)),
    counters.LEASE_EXPIRIES: ("pkgfarm_lease_expiries", "Running attempts whose lease ran out "
                              "(queued again, or failed when local), by architecture",
                              ("arch",)),
    counters.BROKER_RESENDS: ("pkgfarm_broker_resends", "Job messages sent to the broker again, "
                              "by reason (message-lost: not found in Redis; broker-emptied: "
                              "Redis lost its data; held: refused at its claim by a drained "
                              "worker or a paused queue)", ("reason",)),
}
_HISTOGRAMS: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...]]] = {
    counters.JOB_DURATION: ("pkgfarm_job_duration_seconds", "How long a job built on its "
                            "worker, by architecture and outcome", ("arch", "outcome"),
                            counters.DURATION_BUCKETS),
    counters.QUEUE_WAIT: ("pkgfarm_queue_wait_seconds", "How long a job waited from being "
                          "queued until a worker took it, by architecture", ("arch",),
                          counters.WAIT_BUCKETS),
}


#: Labels that counters recorded before the label existed lack, and what they were then:
#: every job was a deb before the farm made other formats.
_LABELS_BEFORE = {"format": "deb"}


class StoreCollector(Collector):
    def __init__(self, services: Any) -> None:
        self.services = services

    def _arches(self) -> list[str]:
        return [*self.services.settings.repository.architectures, "all"]

    def collect(self) -> Iterator[Metric]:
        store = self.services.store
        jobs = GaugeMetricFamily("pkgfarm_jobs", "Jobs now in each state", labels=["state"])
        by_state = store.counters.job_states()
        for state in JobState:
            jobs.add_metric([state.value], by_state.get(state.value, 0))
        yield jobs
        yield from self._counters(store.counters.all())
        yield from self._queues()
        online = GaugeMetricFamily("pkgfarm_workers_online", "Workers whose last heartbeat is "
                                   "recent, by architecture they build", labels=["arch"])
        per_arch: dict[str, int] = dict.fromkeys(self.services.settings.repository.architectures,
                                                 0)
        for worker in store.workers.live(self.services.settings.master.worker_ttl):
            for a in worker.info.architectures:
                per_arch[a] = per_arch.get(a, 0) + 1
        for a, n in sorted(per_arch.items()):
            online.add_metric([a], n)
        yield online
        hooks = GaugeMetricFamily("pkgfarm_webhook_deliveries", "Webhook deliveries kept, by "
                                  "hook and state (pending, delivered, failed: given up)",
                                  labels=["hook", "state"])
        for hook in self.services.settings.master.webhooks:
            for state, n in store.webhooks.counts(hook.name).items():
                hooks.add_metric([hook.name, state], n)
        yield hooks

    def _counters(self, samples: list[counters.Sample]) -> Iterator[Metric]:
        values: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for sample in samples:
            values[sample.name].append((sample.labels, sample.value))
        for key, (name, doc, labels) in _FINAL_SPEC.items():
            family = CounterMetricFamily(name, doc, labels=list(labels))
            seen: dict[tuple[str, ...], float] = {}
            if key == counters.JOBS_FINISHED:
                seen = {(a, f, o.value): 0.0 for a in self._arches()
                        for f in self.services.settings.repository.formats for o in _OUTCOMES}
            elif key == counters.BUILDS_FINISHED:
                seen = {(o.value,): 0.0 for o in _OUTCOMES}
            for label_map, value in values.get(key, []):
                label_values = tuple(label_map.get(n, _LABELS_BEFORE.get(n, ""))
                                     for n in labels)
                seen[label_values] = seen.get(label_values, 0.0) + value
            for label_values, value in sorted(seen.items()):
                family.add_metric(list(label_values), value)
            yield family
        for key, (name, doc, labels, bounds) in _HISTOGRAMS.items():
            histogram = HistogramMetricFamily(name, doc, labels=list(labels))
            groups: dict[tuple[str, ...], dict[str, float]] = defaultdict(dict)
            for suffix in ("_bucket", "_count", "_sum"):
                for label_map, value in values.get(key + suffix, []):
                    group = tuple(label_map.get(n, "") for n in labels)
                    part = f"le={label_map.get('le')}" if suffix == "_bucket" else suffix
                    groups[group][part] = value
            for group, parts in sorted(groups.items()):
                buckets = [(repr(b), parts.get(f"le={b!r}", 0.0)) for b in bounds]
                buckets.append(("+Inf", parts.get("_count", 0.0)))
                histogram.add_metric(list(group), buckets, parts.get("_sum", 0.0))
            yield histogram

    def _queues(self) -> Iterator[Metric]:
        length = GaugeMetricFamily("pkgfarm_queue_length", "Messages waiting in each build.* "
                                   "queue of the broker", labels=["queue"])
        up = GaugeMetricFamily("pkgfarm_broker_up", "1 if the broker (Redis) answered this "
                               "scrape")
        lengths = self.services.scheduler.queue_lengths()
        if lengths is None:
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            for queue, n in sorted(lengths.items()):
                length.add_metric([queue], n)
        yield length
        yield up


def render(services: Any) -> bytes:
    """The metrics text of the whole master."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ProcessCollector())
    registry.register(StoreCollector(services))
    return generate_latest(registry)


class _ProcessCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        for metric in PROCESS_METRICS:
            yield from metric.collect()

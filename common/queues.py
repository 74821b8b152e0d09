"""The one Celery configuration that master (sending) and workers (consuming) share.

The broker settings must agree between every process that touches a Redis database (the
visibility timeout is per database and the smallest one in use wins), so they are written once,
here. The message carries ids only (`BuildTask`); the master stays the authority on who builds
what through the claim step, so a message Redis delivers twice is dropped by the worker.
"""

from __future__ import annotations

import ssl

from celery import Celery

from common.config import Settings

BUILD_TASK = "pkgfarm.build"

#: Redis redelivers an unacknowledged message after this many seconds. It must exceed the
#: longest build (worker.build_timeout): with late acknowledgement a message is acknowledged only
#: when its build ends. A redelivery that happens anyway is harmless: its claim is refused.
VISIBILITY_TIMEOUT = 24 * 3600


def broker_ssl(settings: Settings) -> dict[str, object] | None:
    """Celery's ``broker_use_ssl`` for a ``rediss://`` broker: the certificate must be valid
    for the host and signed by ``broker_ca_file`` (or the system's CAs)."""
    if not settings.effective_broker_url.startswith("rediss://"):
        return None
    options: dict[str, object] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.broker_ca_file:
        options["ssl_ca_certs"] = settings.broker_ca_file
    return options


def celery_config(settings: Settings) -> dict[str, object]:
    return {
        "broker_use_ssl": broker_ssl(settings) or False,
        "broker_url": settings.effective_broker_url,
        "broker_transport_options": {
            "visibility_timeout": max(VISIBILITY_TIMEOUT, settings.worker.build_timeout + 3600),
        },
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        # Pull one build at a time and acknowledge it when it ends.
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "worker_disable_prefetch": True,
        # Pool processes are kept between builds: a build runs in its own process tree (a
        # clean root or bubblewrap) anyway, and replacing the pool process after every task
        # left received messages waiting up to Celery's 5 s pool-maintenance tick.
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0,
        },
        "task_create_missing_queues": True,
        "task_default_queue": "build.all",
    }


def make_celery(settings: Settings, name: str = "pkgfarm") -> Celery:
    app = Celery(name, set_as_current=False)
    app.conf.update(celery_config(settings))
    return app

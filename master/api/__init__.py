"""The HTTP API (``/api/v1``) and the repository (``/repo``): one blueprint per resource.

Views are thin: they check the caller's role, parse the request into the project's types, call
the scheduler, repository or store, and turn the answer into JSON. Orchestration (giving out
attempts, publishing a report, cancelling a build) lives in master.scheduler and
master.repository. Errors are raised as the project's exceptions and turned into JSON in one
place (master.app).
"""

from __future__ import annotations

from flask import Blueprint

from master.api import (
    builds,
    events,
    health,
    jobs,
    metrics,
    packages,
    repo,
    uploads,
    users,
    webhooks,
    workers,
)

BLUEPRINTS: tuple[Blueprint, ...] = (health.bp, builds.bp, jobs.bp, workers.bp, uploads.bp,
                                     packages.bp, repo.bp, events.bp, metrics.bp, webhooks.bp,
                                     users.bp)

"""The dashboard's pages (all GET): overview, builds, one build, packages, workers, repository,
users; and the two things a build page's script reads (its jobs as JSON, a job's log)."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from flask import Response, render_template, request, url_for

from common.arch import ALL
from common.config import ROLES
from common.errors import ApiError, BadRequest, NotFound
from common.states import FINAL_STATES, JobState, build_state
from master import buildlogs, formats
from master.api.helpers import repo_url, svc
from master.api.packages import HISTORY, built_by, success_rate
from master.auth import ADMIN, csrf_token
from master.store import Build, Job
from master.web import bp, charts
from master.web.access import can, page, viewer
from master.web.data import farm_queues, first_error_line, index_updated

PAGE_SIZE = 25
FINISHED_SERIES = tuple(s.value for s in (JobState.SUCCESS, JobState.FAILED,
                                          JobState.DEP_FAILED, JobState.CANCELLED))


# -- shared by every template ----------------------------------------------------------------


@bp.app_template_filter("when")
def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "–"


@bp.app_template_filter("ago")
def ago(ts: float | None) -> str:
    if not ts:
        return "–"
    return f"{duration(time.time() - ts)} ago"


@bp.app_template_filter("duration")
def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


@bp.context_processor
def common_context() -> dict[str, Any]:
    return {"me": viewer(), "can": can, "csrf_token": csrf_token, "states": list(JobState),
            "public_pages": svc().settings.master.public_pages}


@bp.errorhandler(ApiError)
def page_error(exc: ApiError) -> Any:
    return render_template("error.html", error=exc.message, status=exc.status), exc.status


def job_duration(job: Job, now: float | None = None) -> float | None:
    if job.started_at is None:
        return None
    end = job.finished_at or (now or time.time())
    return end - job.started_at


def job_row(job: Job) -> dict[str, Any]:
    """A job as the build page's script sees it."""
    return {"id": job.id, "package": job.package, "version": job.version, "arch": job.arch,
            "format": job.format,
            "state": job.state.value, "worker": job.worker or "", "attempt": job.attempt,
            "queued": when(job.queued_at), "started": when(job.started_at),
            "finished": when(job.finished_at), "duration": duration(job_duration(job)),
            "started_ts": job.started_at if job.state == JobState.BUILDING else None,
            "error": job.error or "", "final": job.state in FINAL_STATES,
            "log_url": url_for("web.job_log", job_id=job.id)}


def _summary(build: Build, jobs: list[Job]) -> dict[str, Any]:
    return {"build": build, "jobs": jobs, "state": build_state([j.state for j in jobs]).value}


# -- overview --------------------------------------------------------------------------------


@bp.get("/")
@page()
def overview() -> Any:
    services = svc()
    store = services.store
    now = time.time()
    start, hours = store.stats.finished_per_hour(24, now)
    labels = [time.strftime("%H:00", time.gmtime(start + i * 3600)) for i in range(len(hours))]
    samples = store.stats.samples(now - 86400)
    workers = store.workers.live(services.settings.master.worker_ttl)
    per_arch: dict[str, int] = defaultdict(int)
    for w in workers:
        for a in w.info.architectures:
            per_arch[a] += 1
    failures = [(j, first_error_line(services.settings.master.data_dir, j))
                for j in store.stats.failures(8)]
    _total, newest = store.stats.builds(limit=10)
    repo = services.settings.repository
    return render_template(
        "overview.html", counts=store.stats.job_counts(), queues=farm_queues(services),
        workers=workers, per_arch=dict(sorted(per_arch.items())),
        newest=[_summary(b, j) for b, j in newest], failures=failures,
        suites=repo.all_suites, architectures=repo.architectures,
        package_counts=store.stats.package_counts(), index_updated=index_updated(services),
        fingerprint=(services.repository.signer.fingerprint
                     if services.repository.signer else None),
        finished_chart=charts.stacked_bars("Jobs finished per hour, by outcome", hours,
                                           FINISHED_SERIES, labels),
        queue_chart=(charts.lines("Queue length over the last day", samples, now - 86400, now)
                     if samples else None),
        series=FINISHED_SERIES)


# -- builds ----------------------------------------------------------------------------------


def _filters() -> dict[str, str]:
    found = {}
    for key in ("state", "package", "requester", "arch"):
        value = request.args.get(key, "").strip()
        if len(value) > 200 or not value.isprintable():
            raise BadRequest(f"{key} is at most 200 printable characters", field=key)
        if value:
            found[key] = value
    if "state" in found and found["state"] not in {s.value for s in JobState}:
        raise BadRequest(f"unknown state {found['state']!r}", field="state")
    return found


@bp.get("/builds")
@page()
def builds() -> Any:
    services = svc()
    filters = _filters()
    try:
        page_no = int(request.args.get("page", "1"))
    except ValueError:
        raise BadRequest("page must be a number", field="page") from None
    if not 1 <= page_no <= 10**6:
        raise BadRequest("page must be between 1 and 1000000", field="page")
    total, found = services.store.stats.builds(**filters, limit=PAGE_SIZE,
                                               offset=(page_no - 1) * PAGE_SIZE)
    pages = max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE)
    arches = list(dict.fromkeys([*services.settings.repository.architectures, ALL]))
    return render_template("builds.html", builds=[_summary(b, j) for b, j in found],
                           filters=filters, total=total, page=page_no, pages=pages,
                           page_size=PAGE_SIZE, arches=arches,
                           requesters=services.store.stats.requesters())


def _build(build_id: int) -> tuple[Build, list[Job]]:
    found = svc().store.jobs.get_build(build_id)
    if found is None:
        raise NotFound(f"no build {build_id}", build=build_id)
    return found


@bp.get("/builds/<id:build_id>")
@page()
def build(build_id: int) -> Any:
    b, jobs = _build(build_id)
    return render_template("build.html", build=b, jobs=jobs, rows=[job_row(j) for j in jobs],
                           state=build_state([j.state for j in jobs]).value,
                           restartable=any(j.state in (JobState.FAILED, JobState.DEP_FAILED,
                                                       JobState.CANCELLED) for j in jobs),
                           cancellable=any(not j.state.is_final for j in jobs))


@bp.get("/builds/<id:build_id>/jobs.json")
@page()
def build_jobs(build_id: int) -> Any:
    b, jobs = _build(build_id)
    return {"id": b.id, "state": build_state([j.state for j in jobs]).value,
            "jobs": [job_row(j) for j in jobs]}


@bp.get("/jobs/<id:job_id>/log")
@page()
def job_log(job_id: int) -> Any:
    """A job's log: as it is (its current attempt), or with ``follow=1`` the log so far and
    then each line as the worker sends it, until the job ends."""
    services = svc()
    job = services.store.jobs.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}", job=job_id)
    data_dir = services.settings.master.data_dir
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
    if request.args.get("follow") in ("1", "true"):
        # No buffering on the way: each line reaches the browser as it is written.
        headers["X-Accel-Buffering"] = "no"
        return Response(buildlogs.follow(services.store, data_dir, job.id),
                        mimetype="text/plain", headers=headers)
    path = buildlogs.log_path(data_dir, job)
    return Response(path.read_bytes() if path.is_file() else b"", mimetype="text/plain",
                    headers=headers)


# -- packages --------------------------------------------------------------------------------


@bp.get("/packages")
@page()
def packages() -> Any:
    records = svc().store.packages.all()
    names: dict[str, dict[str, Any]] = {}
    for r in records:
        entry = names.setdefault(r.name, {"name": r.name, "suites": set(), "versions": set(),
                                          "arches": set(), "uploaded_at": 0.0})
        entry["suites"].add(r.suite)
        entry["versions"].add(r.version)
        entry["arches"].add(r.arch)
        entry["uploaded_at"] = max(entry["uploaded_at"], r.uploaded_at)
    return render_template("packages.html", packages=sorted(names.values(),
                                                            key=lambda e: e["name"]))


@bp.get("/packages/<name>")
@page()
def package(name: str) -> Any:
    services = svc()
    records = services.store.packages.all(name)
    history = services.store.stats.package_jobs(name, HISTORY)
    if not records and not history:
        raise NotFound(f"the farm knows no package {name}", package=name)
    builds_of = built_by(services.store, records)
    order: dict[str, Any] = {}
    for fmt_name in {r.format for r in records}:
        order[fmt_name] = formats.get(fmt_name).format.version_key
    rows = sorted(records, key=lambda r: (r.suite, r.arch))
    by_suite: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        by_suite[r.suite].append(r)
    for suite_rows in by_suite.values():
        suite_rows.sort(key=lambda r: (r.format, order[r.format](r.version)), reverse=True)
    finished, rate = success_rate(history)
    timed = [j for j in reversed(history) if j.state.is_final and j.started_at and j.finished_at]
    chart = charts.bars("Build time of the last builds",
                        [(f"#{j.build_id}", job_duration(j) or 0.0, j.state.value)
                         for j in timed[-30:]]) if timed else None
    versions = sorted({r.version for r in records},
                      key=lambda v: order[records[0].format](v), reverse=True) if records else []
    return render_template(
        "package.html", name=name, by_suite=dict(sorted(by_suite.items())),
        builds_of=builds_of, history=history, job_duration=job_duration,
        success_rate=rate, finished=finished, chart=chart, versions=versions,
        suites=services.settings.repository.all_suites,
        arches=sorted({r.arch for r in records}),
        formats=[f for f in services.settings.repository.formats
                 if any(r.format == f for r in records)], admin=can(ADMIN))


# -- workers ---------------------------------------------------------------------------------


@bp.get("/workers")
@page()
def workers() -> Any:
    services = svc()
    now = time.time()
    building: dict[str, list[Job]] = defaultdict(list)
    for job in services.store.jobs.building():
        building[job.worker or ""].append(job)
    counts = services.store.stats.worker_counts(now - 86400)
    live = services.store.workers.live(services.settings.master.worker_ttl)
    return render_template("workers.html", workers=live, building=building, counts=counts,
                           now=now, queues=farm_queues(services),
                           drained=services.store.workers.drained(), admin=can(ADMIN))


# -- repository ------------------------------------------------------------------------------


@bp.get("/repository")
@page()
def repository() -> Any:
    services = svc()
    repo = services.settings.repository
    url = repo_url()
    signer = services.repository.signer
    # Per served format: its client's configuration for every suite.
    per_suite = {suite: services.client_configs(url, suite) for suite in repo.all_suites}
    clients = []
    for name in services.repository.formats:
        configs = {suite: per_suite[suite][name] for suite in repo.all_suites}
        first = configs[repo.suite]
        clients.append({"name": name, "title": formats.get(name).format.title,
                        "file": first.get("file", ""), "key_url": first.get("key_url"),
                        "setup": first.get("setup"), "url": first["url"],
                        "snippets": {s: c["snippet"] for s, c in configs.items()}})
    held: dict[str, dict[str, dict[str, set[str]]]] = {s: {} for s in repo.all_suites}
    for r in services.store.packages.all():
        versions = held.setdefault(r.suite, {}).setdefault(r.name, {})
        versions.setdefault(f"{r.version} [{r.format}]", set()).add(r.arch)
    return render_template("repository.html", clients=clients,
                           fingerprint=signer.fingerprint if signer else None,
                           held={s: dict(sorted(p.items())) for s, p in held.items()},
                           architectures=repo.architectures, components=repo.all_components,
                           index_updated=index_updated(services))


# -- users (admins) --------------------------------------------------------------------------


@bp.get("/users")
@page(ADMIN)
def users() -> Any:
    services = svc()
    return render_template("users.html", config_users=sorted(services.settings.master.users
                                                             .items()),
                           users=[u for u in services.store.accounts.users()
                                  if u.name not in services.settings.master.users],
                           tokens=services.store.accounts.tokens(),
                           roles=list(ROLES))

"""The ``master`` command's client commands: what the API shows and does, from a terminal.

They talk to the master's HTTP API (common.apiclient) with the config's ``client`` section
(or PKGFARM_CLIENT_URL, _USER, _PASSWORD, _TOKEN), never to the store: they work from any
machine that reaches the master, with that user's roles. Output is an aligned table by
default and JSON with ``--json``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click

from common.apiclient import ApiClient
from common.config import load_settings

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print JSON (for scripts) instead of a table.")


def _client(config_path: str | None) -> ApiClient:
    return ApiClient(load_settings(config_path).client)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Rows as aligned columns under their headers (empty cells as '-')."""
    cells = [[str(h).upper() for h in headers]]
    cells += [["-" if v is None or v == "" else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def _print(data: Any, as_json: bool, rows: Sequence[Sequence[Any]], headers: Sequence[str]
           ) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(table(rows, headers))


def _print_files(data: Any, as_json: bool, key: str, heading: str) -> None:
    """An answer that lists archive files under ``key``: a heading and one file a line."""
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(heading)
    for filename in data[key]:
        click.echo(f"  {filename}")


def _short(ts: str | None) -> str | None:
    """An ISO time as 'YYYY-MM-DD HH:MM:SS' (UTC)."""
    return ts.replace("T", " ").split("+")[0] if ts else None


def _seconds(seconds: float | None) -> str | None:
    """A time span as '42s', '3m05s' or '2h07m'."""
    if seconds is None:
        return None
    whole = max(0, int(seconds))
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"


def _duration(job: dict[str, Any]) -> str | None:
    if not job.get("started_at"):
        return None
    start = datetime.fromisoformat(job["started_at"])
    end = (datetime.fromisoformat(job["finished_at"]) if job.get("finished_at")
           else datetime.now(UTC))
    return _seconds((end - start).total_seconds())


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"


def register(cli: click.Group, config_option: Any) -> None:
    """Add the client commands to the ``master`` command group."""

    @cli.command()
    @json_option
    @config_option
    def status(as_json: bool, config_path: str | None) -> None:
        """The master's health, its queues and workers."""
        client = _client(config_path)
        health = client.get("/api/v1/health")
        queues = client.get("/api/v1/queues")["queues"]
        workers = client.get("/api/v1/workers")["workers"]
        if as_json:
            click.echo(json.dumps({"health": health, "queues": queues, "workers": workers},
                                  indent=2))
            return
        repo = health["repository"]
        click.echo(f"master:      {client.base} ({health['status']}, broker "
                   f"{health['broker']})")
        click.echo(f"repository:  {repo['url']} {repo['suite']}/{repo['component']} "
                   f"({', '.join(repo['architectures'])})")
        click.echo(f"signing key: {health.get('signing_key') or 'none (unsigned)'}")
        building = sum(len(w["building"]) for w in workers)
        click.echo(f"workers:     {len(workers)} online, {building} building")
        click.echo("")
        click.echo(table([(q["name"], q["length"], "paused" if q["paused"] else "running")
                          for q in queues], ["queue", "length", "state"]))

    @cli.command()
    @click.option("--state", default=None, help="queued, building, success, failed, "
                  "dep-failed or cancelled.")
    @click.option("--package", default=None, help="Builds with a job of this package.")
    @click.option("--requester", default=None, help="Builds this user asked for.")
    @click.option("--arch", default=None, help="Builds with a job for this architecture.")
    @click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
    @click.option("--offset", default=0, show_default=True, type=click.IntRange(0))
    @json_option
    @config_option
    def builds(state: str | None, package: str | None, requester: str | None,
               arch: str | None, limit: int, offset: int, as_json: bool,
               config_path: str | None) -> None:
        """Recent builds, newest first."""
        page = _client(config_path).get("/api/v1/builds", state=state, package=package,
                                        requester=requester, arch=arch, limit=limit,
                                        offset=offset)
        rows = [(b["id"], b["status"], ",".join(b["packages"]), b["requested_by"],
                 ",".join(sorted({j["arch"] for j in b["jobs"]})), _short(b["created_at"]))
                for b in page["builds"]]
        _print(page, as_json, rows, ["id", "status", "packages", "requester", "arches",
                                     "created"])
        if not as_json:
            shown = f"{offset + 1}-{offset + len(rows)}" if rows else "none"
            click.echo(f"({shown} of {page['total']})", err=True)

    @cli.command()
    @click.argument("build_id", type=int)
    @json_option
    @config_option
    def build(build_id: int, as_json: bool, config_path: str | None) -> None:
        """One build and its jobs."""
        data = _client(config_path).get(f"/api/v1/builds/{build_id}")
        if as_json:
            click.echo(json.dumps(data, indent=2))
            return
        click.echo(f"build {data['id']}: {data['status']} (asked by "
                   f"{data['requested_by'] or '-'} at {_short(data['created_at'])})")
        click.echo(table([(j["id"], j["package"], j["version"], j["arch"], j["status"],
                           j["worker"], j["attempt"], _short(j["queued_at"]),
                           _duration(j), (j["error"] or "").splitlines()[0][:60]
                           if j["error"] else None)
                          for j in data["jobs"]],
                         ["job", "package", "version", "arch", "state", "worker", "attempt",
                          "queued", "took", "error"]))

    def _act(path: str, key: str, as_json: bool, config_path: str | None) -> None:
        data = _client(config_path).post(path)
        if as_json:
            click.echo(json.dumps(data, indent=2))
        else:
            click.echo(f"build {data['id']}: {data['status']} ({key}: "
                       f"{len(data[key])} job(s))")

    @cli.command()
    @click.argument("build_id", type=int)
    @json_option
    @config_option
    def restart(build_id: int, as_json: bool, config_path: str | None) -> None:
        """Queue again the failed, dep-failed and cancelled jobs of a build."""
        _act(f"/api/v1/builds/{build_id}/restart", "restarted", as_json, config_path)

    @cli.command()
    @click.argument("build_id", type=int)
    @json_option
    @config_option
    def cancel(build_id: int, as_json: bool, config_path: str | None) -> None:
        """Cancel what has not ended of a build."""
        _act(f"/api/v1/builds/{build_id}/cancel", "cancelled", as_json, config_path)

    @cli.command("package-add")
    @click.argument("names", nargs=-1, required=True)
    @click.option("--arch", default=None, help="Build for this architecture only.")
    @json_option
    @config_option
    def package_add(names: tuple[str, ...], arch: str | None, as_json: bool,
                    config_path: str | None) -> None:
        """Queue a build of NAMES; prints the build id."""
        body: dict[str, Any] = {"packages": list(names)}
        if arch:
            body["arch"] = arch
        data = _client(config_path).post("/api/v1/builds", body)
        if as_json:
            click.echo(json.dumps(data, indent=2))
            return
        for job in data["jobs"]:
            click.echo(f"queued {job['package']} {job['version']} for {job['arch']} "
                       f"({job['format']})", err=True)
        for note in data.get("notes", []):
            click.echo(f"note: {note}", err=True)
        click.echo(data["id"])

    @cli.command("logs")
    @click.argument("build_id", type=int)
    @click.argument("name")
    @click.option("--arch", default=None, help="Which architecture's build, if several.")
    @click.option("--format", "fmt", default=None, help="Which format's build, if several.")
    @click.option("--follow", "-f", is_flag=True, help="Keep showing new lines until it ends.")
    @config_option
    def logs(build_id: int, name: str, arch: str | None, fmt: str | None, follow: bool,
             config_path: str | None) -> None:
        """Show the build log of package NAME in build BUILD_ID."""
        client = _client(config_path)
        out = sys.stdout.buffer
        for chunk in client.stream_bytes(f"/api/v1/builds/{build_id}/packages/{name}/log",
                                         arch=arch, format=fmt,
                                         follow="1" if follow else None):
            out.write(chunk)
            out.flush()

    @cli.command()
    @json_option
    @config_option
    def workers(as_json: bool, config_path: str | None) -> None:
        """The workers online: their queues, what each builds and for how long, and the
        jobs each finished in the last 24 hours."""
        data = _client(config_path).get("/api/v1/workers")
        rows = [(w["name"], ",".join(w["architectures"]), ",".join(w["queues"]),
                 w["concurrency"], "drained" if w.get("drained") else "active",
                 ", ".join(f"{b['package']}/{b['arch']} (build {b['build_id']}, "
                           f"{_seconds(b['seconds'])})" for b in w["building"]),
                 f"{w['seconds_since_heartbeat']:.0f}s ago", w["last_24h"]["done"],
                 w["last_24h"]["failed"])
                for w in data["workers"]]
        _print(data, as_json, rows, ["name", "arches", "queues", "slots", "state",
                                     "building", "heartbeat", "done-24h", "failed-24h"])

    def _toggle(path: str, as_json: bool, config_path: str | None, what: str) -> None:
        data = _client(config_path).post(path)
        if as_json:
            click.echo(json.dumps(data, indent=2))
        else:
            click.echo(f"{data['name']}: {what}" + ("" if data["changed"] else " (already)"))

    @cli.command("worker-drain")
    @click.argument("name")
    @json_option
    @config_option
    def worker_drain(name: str, as_json: bool, config_path: str | None) -> None:
        """Let worker NAME finish what it builds and give it nothing new (admin)."""
        _toggle(f"/api/v1/workers/{name}/drain", as_json, config_path, "drained")

    @cli.command("worker-resume")
    @click.argument("name")
    @json_option
    @config_option
    def worker_resume(name: str, as_json: bool, config_path: str | None) -> None:
        """Give a drained worker jobs again (admin)."""
        _toggle(f"/api/v1/workers/{name}/resume", as_json, config_path, "active")

    @cli.command()
    @click.option("--name", default=None, help="Only this package.")
    @json_option
    @config_option
    def packages(name: str | None, as_json: bool, config_path: str | None) -> None:
        """Every archive the repository publishes: one row per suite, version and arch."""
        data = _client(config_path).get("/api/v1/packages", name=name)
        records = sorted(data["packages"], key=lambda r: (r["name"], r["suite"], r["format"],
                                                           r["arch"], r["version"]))
        _print(data, as_json, [(r["name"], r["version"], r["arch"], r["format"], r["suite"],
                                _size(r["size"]), _short(r["uploaded_at"]),
                                r["uploaded_by"], "yes" if r["in_index"] else "no")
                               for r in records],
               ["name", "version", "arch", "format", "suite", "size", "uploaded", "by",
                "indexed"])

    @cli.command()
    @click.argument("name")
    @json_option
    @config_option
    def package(name: str, as_json: bool, config_path: str | None) -> None:
        """Package NAME: its versions per suite and architecture with the build that made
        each, and its build history (durations, success rate)."""
        data = _client(config_path).get(f"/api/v1/packages/{name}")
        if as_json:
            click.echo(json.dumps(data, indent=2))
            return
        rows = sorted(((suite, v["version"], v["arch"], v["format"], v["filename"],
                        f"build {v['build_id']}" if v["build_id"] is not None
                        else f"uploaded by {v['uploaded_by'] or '-'}")
                       for v in data["versions"] for suite in v["suites"]),
                      key=lambda r: r[0])  # stable: each suite's newest version first
        click.echo(f"{data['name']}: published")
        click.echo(table(rows, ["suite", "version", "arch", "format", "file", "made-by"])
                   if rows else "(in no suite)")
        click.echo("")
        rate = data["success_rate"]
        click.echo(f"build history: {data['finished']} finished"
                   + (f", {rate * 100:.0f} % succeeded" if rate is not None else ""))
        click.echo(table([(f"build {j['build_id']}", j["version"], j["arch"], j["format"],
                           j["state"], j["worker"], j["attempt"], _short(j["finished_at"]),
                           _seconds(j["seconds"])) for j in data["history"]],
                         ["build", "version", "arch", "format", "state", "worker", "attempt",
                          "finished", "took"]))

    @cli.command("package-promote")
    @click.argument("name")
    @click.argument("version")
    @click.option("--from", "source", required=True, help="The suite that publishes it.")
    @click.option("--to", "target", required=True, help="The suite to publish it in too.")
    @click.option("--format", "fmt", default=None,
                  help="Only this format's archives (default: every format's).")
    @json_option
    @config_option
    def package_promote(name: str, version: str, source: str, target: str, fmt: str | None,
                        as_json: bool, config_path: str | None) -> None:
        """Publish NAME VERSION of suite --from in suite --to as well (admin)."""
        body = {"version": version, "from": source, "to": target}
        if fmt is not None:
            body["format"] = fmt
        data = _client(config_path).post(f"/api/v1/packages/{name}/promote", body)
        _print_files(data, as_json, "promoted",
                     f"promoted {name} {version} from {source} to {data['suite']}:")

    @cli.command("package-remove")
    @click.argument("name")
    @click.option("--version", "version", default=None, help="Only this version.")
    @click.option("--arch", default=None, help="Only this architecture.")
    @click.option("--format", "fmt", default=None, help="Only this format's archives.")
    @json_option
    @config_option
    def package_remove(name: str, version: str | None, arch: str | None, fmt: str | None,
                       as_json: bool, config_path: str | None) -> None:
        """Take package NAME out of the repository: every suite, version, architecture and
        format, or only --version, --arch and/or --format (admin)."""
        data = _client(config_path).delete(f"/api/v1/packages/{name}", version=version,
                                           arch=arch, format=fmt)
        _print_files(data, as_json, "removed",
                     f"removed {len(data['removed'])} archive(s) of {name}:")

    @cli.command()
    @click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 500),
                  help="The newest deliveries shown per hook.")
    @json_option
    @config_option
    def webhooks(limit: int, as_json: bool, config_path: str | None) -> None:
        """The configured webhooks and their newest deliveries (admin)."""
        data = _client(config_path).get("/api/v1/webhooks", limit=limit)
        if as_json:
            click.echo(json.dumps(data, indent=2))
            return
        hooks = data["webhooks"]
        if not hooks:
            click.echo("no webhook is configured (master.webhooks)")
            return
        click.echo(table([(h["name"], h["url"], ",".join(h["events"]), h["counts"]["delivered"],
                           h["counts"]["pending"], h["counts"]["failed"]) for h in hooks],
                         ["hook", "url", "events", "delivered", "pending", "failed"]))
        click.echo("")
        click.echo(table([(h["name"], d["id"], d["event"], d["build_id"], d["state"],
                           d["attempts"], _delivery_result(d), _short(d["last_try"]),
                           _short(d["next_try"]))
                          for h in hooks for d in h["deliveries"]],
                         ["hook", "delivery", "event", "build", "state", "tries", "result",
                          "last-try", "next-try"]))

    @cli.command()
    @json_option
    @config_option
    def queues(as_json: bool, config_path: str | None) -> None:
        """The build queues: their length in the broker, paused or not."""
        data = _client(config_path).get("/api/v1/queues")
        _print(data, as_json, [(q["name"], q["length"], "paused" if q["paused"] else "running")
                               for q in data["queues"]], ["queue", "length", "state"])

    @cli.command("queue-pause")
    @click.argument("queue")
    @json_option
    @config_option
    def queue_pause(queue: str, as_json: bool, config_path: str | None) -> None:
        """Hold the jobs of QUEUE (e.g. build.amd64) until it is resumed (admin)."""
        _toggle(f"/api/v1/queues/{queue}/pause", as_json, config_path, "paused")

    @cli.command("queue-resume")
    @click.argument("queue")
    @json_option
    @config_option
    def queue_resume(queue: str, as_json: bool, config_path: str | None) -> None:
        """Let the jobs of a paused QUEUE run (admin)."""
        _toggle(f"/api/v1/queues/{queue}/resume", as_json, config_path, "running")

    @cli.command()
    @click.option("--follow", "-f", is_flag=True,
                  help="Keep printing new events as they happen (reconnecting as needed).")
    @click.option("--kinds", default=None, help="Only these kinds, comma-separated.")
    @click.option("--build", "build_id", type=int, default=None,
                  help="Only this build's events.")
    @click.option("--after", type=click.IntRange(0), default=None,
                  help="Start after this event id (default: the newest --limit events; "
                       "with --follow, only new ones).")
    @click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000),
                  help="Without --follow: the most events printed (the newest, or the "
                       "first after --after).")
    @json_option
    @config_option
    def events(follow: bool, kinds: str | None, build_id: int | None, after: int | None,
               limit: int, as_json: bool, config_path: str | None) -> None:
        """The farm's events, oldest first: one line each, or one JSON object per line with
        --json. Without --after, the newest ones."""
        client = _client(config_path)
        if not follow:
            page = client.get("/api/v1/events/list", after=after or 0, limit=limit,
                              kinds=kinds, build=build_id,
                              newest="1" if after is None else None)
            if as_json:
                for event in page["events"]:
                    click.echo(json.dumps(event))
            else:
                click.echo(table([_event_row(e) for e in page["events"]],
                                 ["id", "time", "kind", "build", "job", "details"]))
            return
        for kind, _event_id, data in client.events(after=after, kinds=kinds, build=build_id):
            if kind == "reset":
                click.echo(json.dumps({"kind": "reset", "newest_id": data}) if as_json
                           else f"-- reset: events were missed; going on after {data}")
            elif as_json:
                click.echo(json.dumps(data))
            else:
                click.echo("  ".join("-" if v is None else str(v) for v in _event_row(data)))
            sys.stdout.flush()


_OWN = {"id", "at", "kind", "build_id", "job_id"}


def _event_row(event: dict[str, Any]) -> tuple[Any, ...]:
    when = datetime.fromtimestamp(event["at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
    details = " ".join(f"{k}={_compact(v)}" for k, v in sorted(event.items())
                       if k not in _OWN and v is not None)
    return (event["id"], when, event["kind"], event["build_id"], event["job_id"], details)


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value.splitlines()[0][:80] if value else "''"
    return json.dumps(value, separators=(",", ":"))


def _delivery_result(delivery: dict[str, Any]) -> str | None:
    """What the receiver last answered: its HTTP status, or why there was no answer."""
    if delivery["last_status"] is not None:
        return f"HTTP {delivery['last_status']}"
    if delivery["last_error"]:
        return str(delivery["last_error"]).splitlines()[0][:60]
    return None

"""The dashboard's actions: each a POST from one of its own forms (carrying the session's CSRF
token), answered with a redirect back to the page (its outcome shown there once)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import flash, redirect, request, url_for

from common import formats as common_formats
from common.errors import ApiError, BadRequest, Forbidden
from master.api import users as user_api
from master.api.helpers import svc
from master.auth import ADMIN, caller_has, check_may_build, current_user
from master.web import bp
from master.web.access import page

MAX_FIELD = 2000


def _field(name: str, required: bool = True) -> str:
    value = request.form.get(name, "").strip()
    if len(value) > MAX_FIELD or not value.isprintable():
        raise BadRequest(f"{name} is at most {MAX_FIELD} printable characters", field=name)
    if required and not value:
        raise BadRequest(f"{name} is required", field=name)
    return value


def action(back: Callable[..., str]) -> Callable[[Callable[..., str]], Callable[..., Any]]:
    """Run the view; flash its message (or the error it raised); go back to ``back(**kw)``."""
    def decorator(view: Callable[..., str]) -> Callable[..., Any]:
        @wraps(view)
        def wrapped(**kwargs: Any) -> Any:
            target = back(**kwargs)
            try:
                message = view(**kwargs)
            except ApiError as exc:
                flash(exc.message, "error")
            else:
                flash(message, "info")
            return redirect(target, code=303)
        return wrapped
    return decorator


def _to_build(build_id: int) -> str:
    return url_for("web.build", build_id=build_id)


# -- builds ----------------------------------------------------------------------------------


@bp.post("/builds/new")
@page("build")
def submit_build() -> Any:
    try:
        names = [n for n in _field("packages").replace(",", " ").split() if n]
        arch = _field("arch", required=False) or None
        if len(names) > 100:
            raise BadRequest("at most 100 packages at once", field="packages")
        host = common_formats.build_host()
        if any(host.names_location(n) for n in names) and not caller_has(ADMIN):
            raise Forbidden("only admins may build from a URL, a path or a git repository")
        check_may_build(names)
        submitted = svc().scheduler.submit(names, arch, current_user())
    except ApiError as exc:
        flash(exc.message, "error")
        return redirect(url_for("web.builds"), code=303)
    flash(f"Build {submitted.build_id} queued: " + ", ".join(
        f"{p} {v} ({a}, {f})" for _j, p, v, a, f in submitted.jobs), "info")
    for note in submitted.notes:
        flash(note, "info")
    return redirect(_to_build(submitted.build_id), code=303)


@bp.post("/builds/<id:build_id>/restart")
@page("build")
@action(_to_build)
def restart_build(build_id: int) -> str:
    from master.web.pages import _build

    check_may_build(list(_build(build_id)[0].packages))
    restarted = svc().scheduler.restart(build_id)
    return (f"Restarted {len(restarted)} job(s)." if restarted
            else "Nothing to restart: no job failed or was cancelled.")


@bp.post("/builds/<id:build_id>/cancel")
@page("build")
@action(_to_build)
def cancel_build(build_id: int) -> str:
    from master.web.pages import _build

    _build(build_id)
    cancelled = svc().scheduler.cancel(build_id)
    return f"Cancelled {len(cancelled)} job(s)." if cancelled else "Nothing left to cancel."


# -- packages (admins) -----------------------------------------------------------------------


def _to_package(name: str) -> str:
    return url_for("web.package", name=name)


@bp.post("/packages/<name>/promote")
@page(ADMIN)
@action(_to_package)
def promote_package(name: str) -> str:
    version, source, target = _field("version"), _field("from"), _field("to")
    fmt = _field("format", required=False) or None
    files = svc().repository.promote(name, version, source, target, fmt)
    return f"Promoted {name} {version} from {source} to {target}: {len(files)} file(s)."


@bp.post("/packages/<name>/remove")
@page(ADMIN)
@action(_to_package)
def remove_package(name: str) -> str:
    version = _field("version", required=False) or None
    arch = _field("arch", required=False) or None
    fmt = _field("format", required=False) or None
    removed = svc().repository.remove(name, version, arch, fmt)
    return f"Removed {len(removed)} file(s) of {name}."


# -- workers and queues (admins) ------------------------------------------------------------


def _to_workers(**_: Any) -> str:
    return url_for("web.workers")


@bp.post("/workers/<name>/drain")
@page(ADMIN)
@action(_to_workers)
def drain_worker(name: str) -> str:
    svc().scheduler.set_drained(name, True)
    return f"Worker {name} drained: it finishes what it builds and takes nothing new."


@bp.post("/workers/<name>/resume")
@page(ADMIN)
@action(_to_workers)
def resume_worker(name: str) -> str:
    svc().scheduler.set_drained(name, False)
    return f"Worker {name} takes jobs again."


@bp.post("/queues/<name>/pause")
@page(ADMIN)
@action(_to_workers)
def pause_queue(name: str) -> str:
    svc().scheduler.set_paused(name, True)
    return f"Queue {name} paused: its jobs stay queued until it is resumed."


@bp.post("/queues/<name>/resume")
@page(ADMIN)
@action(_to_workers)
def resume_queue(name: str) -> str:
    svc().scheduler.set_paused(name, False)
    return f"Queue {name} resumed."


# -- users and tokens (admins) ---------------------------------------------------------------


def _to_users(**_: Any) -> str:
    return url_for("web.users")


def _roles() -> list[str]:
    return request.form.getlist("roles")


def _patterns() -> list[str]:
    return [p for p in _field("packages", required=False).replace(",", " ").split() if p]


@bp.post("/users/new")
@page(ADMIN)
@action(_to_users)
def create_user() -> str:
    created = user_api.add_user(_field("name"), request.form.get("password", ""), _roles(),
                                _patterns(), current_user())
    return f"User {created.name} made ({', '.join(created.roles)})."


@bp.post("/users/<name>/update")
@page(ADMIN)
@action(_to_users)
def update_user(name: str) -> str:
    data: dict[str, Any] = {"roles": _roles(), "packages": _patterns(),
                            "disabled": request.form.get("disabled") == "1"}
    if request.form.get("password"):
        data["password"] = request.form["password"]
    updated = user_api.change_user(name, data)
    return f"User {updated.name} saved" + (" (disabled)." if updated.disabled else ".")


@bp.post("/users/<name>/delete")
@page(ADMIN)
@action(_to_users)
def delete_user(name: str) -> str:
    user_api.remove_user(name)
    return f"User {name} removed, with its tokens."


@bp.post("/tokens/new")
@page(ADMIN)
def create_token() -> Any:
    try:
        record, secret = user_api.add_token(_field("name"), _roles(),
                                            _field("user", required=False) or None,
                                            current_user())
    except ApiError as exc:
        flash(exc.message, "error")
    else:
        flash(f"Token {record.id} ({record.name}) made. Copy it now; it is not shown again:",
              "info")
        flash(secret, "secret")
    return redirect(url_for("web.users"), code=303)


@bp.post("/tokens/<id:token_id>/delete")
@page(ADMIN)
@action(_to_users)
def delete_token(token_id: int) -> str:
    user_api.remove_token(token_id)
    return f"Token {token_id} removed."

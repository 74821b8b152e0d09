"""Logging in and out of the dashboard: the form, the session cookie, the CSRF token."""

from __future__ import annotations

import secrets
import time
from typing import Any

from flask import flash, redirect, render_template, request, session, url_for

from common.errors import TooManyRequests
from master.api.helpers import svc
from master.auth import CSRF_FIELD, check_csrf, csrf_token, hash_token
from master.web import bp
from master.web.access import viewer

MAX_FIELD = 1024


def _local(target: str | None) -> str:
    """Where to go after logging in: a path of this site only (never another host)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("web.overview")
    return target


@bp.get("/login")
def login() -> Any:
    csrf_token()  # the form's token, kept in the (not yet logged-in) session
    return render_template("login.html", next=_local(request.args.get("next")),
                           user=viewer())


@bp.post("/login")
def login_post() -> Any:
    next_url = _local(request.form.get("next"))
    if not isinstance(session.get("csrf"), str) or CSRF_FIELD not in request.form:
        # No session yet (cookies refused, or the form came from elsewhere).
        flash("Your browser did not send the log-in form's session cookie; allow cookies for "
              "this site and try again.", "error")
        return redirect(url_for("web.login", next=next_url), code=303)
    check_csrf()
    username = request.form.get("username", "")[:MAX_FIELD]
    password = request.form.get("password", "")[:MAX_FIELD]
    try:
        name = svc().auth.verify(username, password) if username and password else None
    except TooManyRequests as exc:
        flash(exc.message, "error")
        return render_template("login.html", next=next_url, user=None), 429
    if name is None:
        flash("Wrong user name or password.", "error")
        return render_template("login.html", next=next_url, user=None), 401
    services = svc()
    sid = secrets.token_urlsafe(32)
    services.store.accounts.open_session(
        hash_token(sid), name, time.time() + services.settings.master.session_hours * 3600)
    session.clear()
    session["user"] = name
    session["sid"] = sid  # the store knows it (hashed) while the log-in is open
    session["csrf"] = secrets.token_urlsafe(32)  # a fresh token for the logged-in session
    session.permanent = True
    return redirect(next_url, code=303)


@bp.post("/logout")
def logout() -> Any:
    if session.get("user") is not None:
        check_csrf()
    sid = session.get("sid")
    if isinstance(sid, str):
        svc().store.accounts.close_session(hash_token(sid))  # the cookie is worthless now
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("web.login"), code=303)

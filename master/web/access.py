"""Who may see a page or take an action, for the dashboard's views."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import current_app, g, redirect, request, url_for

from common.errors import Forbidden
from master.auth import SAFE_METHODS, Identity, check_csrf, session_identity


def _public() -> bool:
    return bool(current_app.extensions["pkgfarm"].settings.master.public_pages)


def viewer() -> Identity | None:
    """The logged-in user of this request (remembered for it)."""
    if "pkgfarm_identity" not in g:
        g.pkgfarm_identity = session_identity()
    found: Identity | None = g.pkgfarm_identity
    return found


def can(role: str) -> bool:
    me = viewer()
    return me is not None and me.has(role)


def login_url() -> str:
    query = request.query_string.decode()
    return url_for("web.login", next=request.path + (f"?{query}" if query else ""))


def page(role: str = "read") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A view decorator for the dashboard: reading pages need ``role`` (``read`` pages are
    open to anyone with ``master.public_pages``); anything but GET needs a logged-in user with
    ``role`` and the session's CSRF token. Strangers are sent to the log-in form."""
    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            me = viewer()
            safe = request.method in SAFE_METHODS
            if me is None:
                if safe and role == "read" and _public():
                    return view(*args, **kwargs)
                return redirect(login_url(), code=302 if safe else 303)
            if not safe:
                check_csrf()
            if not me.has(role):
                raise Forbidden(f"{me.name} does not hold the {role} role")
            return view(*args, **kwargs)
        return wrapped
    return decorator

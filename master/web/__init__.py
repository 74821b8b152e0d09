"""The dashboard: server-rendered pages (Jinja templates), one stylesheet and one small script,
served by the master itself (same gunicorn, same users and roles).

A browser logs in through the form at ``/login`` and is then known by the signed session
cookie. Every page needs the ``read`` role unless ``master.public_pages`` is on (then the
read-only pages answer anyone); every action is a POST that carries the session's CSRF token,
and its buttons are shown only to users who hold the role the action needs.
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("web", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static")

from master.web import actions, pages, session, webhooks  # noqa: E402, F401  (they add the routes)

"""``/repo/``: the repositories themselves, for stock package clients (no authentication)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, redirect, send_from_directory

from common.errors import NotFound
from master import formats
from master.api.helpers import svc
from master.storage import LocalStorage

bp = Blueprint("repo", __name__, url_prefix="/repo")


def _changes_in_place(path: str) -> bool:
    return any(formats.get(name).changes_in_place(path) for name in svc().repository.formats)


def _archive_alias(path: str) -> str | None:
    """The pool path an archive's name through a suite folder stands for (a format's
    ``archive_alias``); NotFound when the suite does not hold it.

    Stand-in, in the rpm branch, for the route the lead adds on main.
    """
    services = svc()
    for name in services.repository.formats:
        fmt = formats.get(name)
        alias = getattr(fmt, "archive_alias", None)
        found = alias(path) if alias is not None else None
        if found is None:
            continue
        suite, filename = found
        rec = services.store.packages.by_filename(name, filename)
        held = rec is not None and any(
            r.suite == suite and r.filename == filename and r.format == name
            for r in services.store.packages.all(rec.name))
        if not held or rec is None:
            raise NotFound(f"/repo/{path} does not exist")
        return rec.pool_path
    return None


@bp.get("/", defaults={"path": ""})
@bp.get("/<path:path>")
def serve(path: str) -> Any:
    if not path or path.endswith("/"):
        raise NotFound("directory listings are not served")
    services = svc()
    storage = services.repository.storage
    alias = _archive_alias(path)
    if alias is not None:
        return redirect(f"/repo/{alias}", code=302)
    if isinstance(storage, LocalStorage):
        # Index files change in place, possibly twice within a second, and If-Modified-Since
        # has one-second resolution: answer them whole, always. Archives and content-addressed
        # copies never change, so conditional requests are safe for them.
        return send_from_directory(storage.root, path, max_age=0,
                                   conditional=not _changes_in_place(path))
    try:
        if services.settings.storage.serve == "redirect":
            if not storage.exists(path):
                raise FileNotFoundError(path)
            return redirect(storage.url(path, expires=600) or "", code=302)
        size = storage.size(path)
        stream = storage.open(path)
    except (FileNotFoundError, ValueError):
        raise NotFound(f"/repo/{path} does not exist") from None

    def body() -> Iterator[bytes]:
        with stream:
            while chunk := stream.read(1024 * 1024):
                yield chunk
    return Response(body(), mimetype="application/octet-stream",
                    headers={"Content-Length": str(size)})

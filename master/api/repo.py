"""``/repo/``: the repositories themselves, for stock package clients (no authentication)."""

from __future__ import annotations

import mimetypes
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, redirect, request, send_from_directory

from common.errors import NotFound
from master import formats
from master.api.helpers import svc
from master.storage import LocalStorage

bp = Blueprint("repo", __name__, url_prefix="/repo")


def _changes_in_place(path: str) -> bool:
    return any(formats.get(name).changes_in_place(path) for name in svc().repository.formats)


#: The media types of compressed files. A repository serves them as they are stored: were
#: they sent with ``Content-Encoding`` (what a guess from ``.gz`` would say), HTTP clients would
#: unpack them on the way and hand the index readers something else than the file named.
_COMPRESSED = {"gzip": "application/gzip", "xz": "application/x-xz",
               "bzip2": "application/x-bzip2", "compress": "application/x-compress",
               "br": "application/x-brotli"}


def _media_type(path: str) -> str:
    media, encoding = mimetypes.guess_type(path)
    if encoding is not None:
        return _COMPRESSED.get(encoding, "application/octet-stream")
    return media or "application/octet-stream"


def _alias_target(path: str) -> str | None:
    """The pool path of an archive a client asks for through a suite folder (formats whose
    clients fetch archives beside the index, such as pacman's), or None when ``path`` is no
    such name; NotFound when the suite does not hold that archive."""
    services = svc()
    for name in services.repository.formats:
        alias = formats.get(name).archive_alias(path)
        if alias is None:
            continue
        suite, filename = alias
        record = services.store.packages.by_filename(name, filename, suite)
        if record is None:
            raise NotFound(f"/repo/{path} does not exist")
        return record.pool_path
    return None


@bp.get("/", defaults={"path": ""})
@bp.get("/<path:path>")
def serve(path: str) -> Any:
    if not path or path.endswith("/"):
        raise NotFound("directory listings are not served")
    target = _alias_target(path)
    if target is not None:
        # One pool file serves every suite and architecture folder that lists it.
        return redirect(f"{request.script_root}/repo/{target}", code=302)
    services = svc()
    storage = services.repository.storage
    if isinstance(storage, LocalStorage):
        # Index files change in place, possibly twice within a second, and If-Modified-Since
        # has one-second resolution: answer them whole, always. Archives and content-addressed
        # copies never change, so conditional requests are safe for them.
        return send_from_directory(storage.root, path, max_age=0, mimetype=_media_type(path),
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

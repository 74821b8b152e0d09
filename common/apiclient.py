"""A client of the master's HTTP API for people's commands (``master status``, ``master
builds``, ``master events``, ...), with the credentials of the config's ``client`` section.

Answers that fail are raised as the project's errors (common.errors), carrying the master's
message; an unreachable or restarting master is tried again for a few seconds first. The
event stream is followed across dropped connections with ``Last-Event-ID``, so a follower
misses nothing and sees nothing twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import requests

from common.config import ClientSettings
from common.errors import PkgfarmError, Unauthorized, Unavailable, error_for_status

#: Seconds a call keeps trying while the master cannot be reached (or answers 503/429).
RETRY_FOR = 15.0


class ApiClient:
    def __init__(self, settings: ClientSettings, *, timeout: float = 60.0,
                 retry_for: float = RETRY_FOR) -> None:
        self.base = settings.url.rstrip("/")
        self.session = requests.Session()
        if settings.token:
            self.session.headers["Authorization"] = f"Bearer {settings.token}"
        elif settings.user is not None and settings.password is not None:
            self.session.auth = (settings.user, settings.password)
        self.has_credentials = bool(settings.token or settings.user)
        self.verify: str | bool = settings.ca_file or True
        self.timeout = timeout
        self.retry_for = retry_for

    def request(self, method: str, path: str, *, stream: bool = False,
                read_timeout: float | None = None, **kwargs: Any) -> requests.Response:
        deadline = time.monotonic() + self.retry_for
        delay = 0.5
        timeout = (10.0, read_timeout if read_timeout is not None else self.timeout)
        while True:
            try:
                resp = self.session.request(method, self.base + path, timeout=timeout,
                                            verify=self.verify, stream=stream, **kwargs)
            except requests.exceptions.SSLError as exc:
                raise PkgfarmError(f"cannot verify the TLS certificate of the master at "
                                   f"{self.base} (client.ca_file): {exc}") from None
            except requests.RequestException as exc:
                problem = f"cannot reach the master at {self.base}: {exc.__class__.__name__}"
            else:
                if resp.status_code < 400:
                    return resp
                error = error_for_status(resp.status_code)
                message = _message(resp)
                if not error.retryable:
                    if error is Unauthorized and not self.has_credentials:
                        message += (" (set client.user and client.password, or client.token, "
                                    "in the config, or PKGFARM_CLIENT_USER and "
                                    "PKGFARM_CLIENT_PASSWORD, or PKGFARM_CLIENT_TOKEN)")
                    raise error(message, **_details(resp))
                problem = f"the master answered {resp.status_code}: {message}"
            if time.monotonic() + delay > deadline:
                raise Unavailable(problem)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path, params=clean).json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=body if body is not None else {}).json()

    def delete(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self.request("DELETE", path, params=clean).json()

    def stream_bytes(self, path: str, **params: Any) -> Iterator[bytes]:
        """A streamed answer's body as it arrives (a followed log)."""
        with self.request("GET", path, stream=True, read_timeout=3600,
                          params={k: v for k, v in params.items() if v is not None}) as resp:
            yield from resp.iter_content(chunk_size=None)

    def events(self, *, after: int | None, kinds: str | None, build: int | None
               ) -> Iterator[tuple[str, int | None, Any]]:
        """Follow the event stream: (kind, id, data) of each message, reconnecting after
        the last id seen when the connection drops (the master restarts), for good.

        Without ``after`` it starts with what comes next: after the newest event at the time
        of the first call, asked of the master first, so that a connection that drops before
        any event came still resumes from there (not from whatever is newest when it is made
        again)."""
        last = after
        while True:
            if last is None:
                try:
                    last = int(self.get("/api/v1/events/list", limit=1)["newest_id"])
                except (requests.RequestException, Unavailable):
                    time.sleep(1)  # the master is away: ask again
                    continue
            headers = {"Accept": "text/event-stream", "Last-Event-ID": str(last)}
            params = {k: v for k, v in (("kinds", kinds), ("build", build)) if v is not None}
            try:
                with self.request("GET", "/api/v1/events", stream=True, read_timeout=60,
                                  headers=headers, params=params) as resp:
                    for kind, event_id, data in _messages(resp.iter_lines(decode_unicode=True)):
                        if event_id is not None:
                            last = event_id
                        yield kind, event_id, data
            except (requests.RequestException, Unavailable):
                pass  # dropped, or the master is restarting: go on after the last id seen
            time.sleep(1)


def _messages(lines: Iterator[str]) -> Iterator[tuple[str, int | None, Any]]:
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in fields:
                event_id = int(fields["id"]) if fields.get("id", "").isdigit() else None
                yield fields.get("event", "message"), event_id, json.loads(fields["data"])
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            fields[name] = f"{fields[name]}\n{value}" if name in fields else value


def _message(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:500] or resp.reason
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return resp.text.strip()[:500]


def _details(resp: requests.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {}
    return {k: v for k, v in body.items() if k != "error"} if isinstance(body, dict) else {}

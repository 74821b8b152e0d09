"""A small Server-Sent Events reader for the tests: what a browser's EventSource would get."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests

from tests.integration.farm import PASSWORD


@dataclass
class Message:
    id: int | None
    event: str
    data: Any


class Stream:
    """One open event stream (GET /api/v1/events) of a master."""

    def __init__(self, url: str, *, user: str = "reader", last_event_id: int | None = None,
                 params: dict[str, Any] | None = None, read_timeout: float = 30) -> None:
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self.response = requests.get(f"{url}/api/v1/events", params=params or {},
                                     headers=headers, auth=(user, PASSWORD), stream=True,
                                     timeout=(10, read_timeout))
        assert self.response.status_code == 200, self.response.text
        assert self.response.headers["Content-Type"].startswith("text/event-stream")
        self._lines = self.response.iter_lines(decode_unicode=True)
        self.comments: list[str] = []

    def messages(self) -> Iterator[Message]:
        fields: dict[str, str] = {}
        for line in self._lines:
            if line == "":
                if "event" in fields or "data" in fields:
                    raw = fields.get("data", "")
                    yield Message(int(fields["id"]) if "id" in fields else None,
                                  fields.get("event", "message"), json.loads(raw))
                fields = {}
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            fields[name] = fields[name] + "\n" + value if name in fields else value

    def read_until(self, done: Callable[[list[Message]], bool], timeout: float = 120
                   ) -> list[Message]:
        """Messages until ``done`` says the list so far is enough."""
        got: list[Message] = []
        end = time.monotonic() + timeout
        for message in self.messages():
            got.append(message)
            if done(got):
                return got
            if time.monotonic() > end:
                break
        raise AssertionError(f"the stream ended or timed out before it was done: {got}")

    def close(self) -> None:
        self.response.close()

    def local_port(self) -> int:
        """This client's port (to find which master process serves it)."""
        sock = self.response.raw._fp.fp.raw._sock  # urllib3 -> http.client -> socket
        return int(sock.getsockname()[1])

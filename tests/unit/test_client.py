"""worker/client.py against a small HTTP server on loopback: which answers are tried again."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from common.config import WorkerSettings
from common.errors import BadRequest, Conflict, Forbidden, Unavailable
from worker.client import MasterClient


class Script:
    """The answers the server gives, in order; the last one repeats."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str]]] = []
        self.seen: list[float] = []


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            script.seen.append(time.monotonic())
            status, headers = script.answers[min(len(script.seen), len(script.answers)) - 1]
            body = json.dumps({"status": "ok"} if status < 400 else
                              {"error": f"answer {status}"}).encode()
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    finally:
        httpd.shutdown()
        httpd.server_close()


def client(url: str, retry_for: float = 20) -> MasterClient:
    return MasterClient(WorkerSettings(master_url=url, password="pw"), retry_for=retry_for)


@pytest.mark.parametrize("status", [429, 503, 500, 502])
def test_busy_and_unavailable_answers_are_tried_again(server, status: int) -> None:
    url, script = server
    script.answers = [(status, {}), (status, {}), (200, {})]
    assert client(url).health() == {"status": "ok"}
    assert len(script.seen) == 3
    # Exponential backoff: the second wait is longer than the first.
    first, second = script.seen[1] - script.seen[0], script.seen[2] - script.seen[1]
    assert 0.4 < first < second


def test_retry_after_is_honoured(server) -> None:
    url, script = server
    script.answers = [(429, {"Retry-After": "2"}), (200, {})]
    assert client(url).health() == {"status": "ok"}
    assert script.seen[1] - script.seen[0] >= 1.9


def test_a_lasting_refusal_ends_as_unavailable(server) -> None:
    url, script = server
    script.answers = [(429, {})]
    start = time.monotonic()
    with pytest.raises(Unavailable, match="429"):
        client(url, retry_for=2).health()
    assert time.monotonic() - start < 10
    assert len(script.seen) >= 2


@pytest.mark.parametrize(("status", "error"), [(400, BadRequest), (403, Forbidden),
                                               (409, Conflict)])
def test_final_answers_are_not_tried_again(server, status: int, error: type) -> None:
    url, script = server
    script.answers = [(status, {})]
    with pytest.raises(error, match=f"answer {status}"):
        client(url).health()
    assert len(script.seen) == 1

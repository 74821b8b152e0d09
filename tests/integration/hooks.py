"""A webhook receiver for the tests: a small HTTP server on loopback that answers each
delivery's tries as the test plans and records every request."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """A small HTTP server on loopback that answers the tries of each delivery as ``plan``
    says, in turn (500: fail, "slow": answer after the hook's time-out, 200: accept; the last
    entry goes on), and records every request."""

    def __init__(self) -> None:
        self.plan: list[Any] = [200]
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                delivery = self.headers.get("X-Pkgfarm-Delivery", "")
                with receiver.lock:
                    n = sum(e["headers"].get("x-pkgfarm-delivery") == delivery
                            for e in receiver.requests)
                    action = receiver.plan[min(n, len(receiver.plan) - 1)]
                    entry = {"headers": {k.lower(): v for k, v in self.headers.items()},
                             "body": body, "action": action, "at": time.time()}
                    receiver.requests.append(entry)
                if action == "slow":
                    time.sleep(2.5)  # the hook's timeout is 1 s
                    status = 200
                else:
                    status = int(action)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the master gave up waiting

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def set_plan(self, plan: list[Any]) -> None:
        """From now on, answer the n-th try of each delivery with ``plan[n]``."""
        with self.lock:
            self.plan = list(plan)
            self.requests = [dict(e, headers={**e["headers"], "x-pkgfarm-delivery": "old"})
                             if e["action"] != 200 else e for e in self.requests]

    def accepted(self) -> list[dict[str, Any]]:
        """The requests answered 200 in time, in the order they came, with the parsed body."""
        with self.lock:
            entries = [dict(e) for e in self.requests if e["action"] == 200]
        for e in entries:
            e["json"] = json.loads(e["body"])
        return entries

"""API latency and build throughput with many long-lived or slow connections open.

Set-up (not timed): a redis-server, the master under gunicorn (2 processes, gevent workers) and
two `worker run` processes (host, `sandbox: none`), all started with the helpers of
tests.integration.farm and stopped by their PIDs; N trivial definitions.

Each phase keeps --connections connections open to the master while it measures:

- none: nothing else open (the baseline of the same run);
- slow clients: half send their request headers one line every 2 s, half announce a large
  upload and send a few bytes of it;
- log follows: `GET …/log?follow=1` of a build that stays running (a local job whose log
  never ends while the phase lasts);
- event streams: `GET /api/v1/events` (Server-Sent Events), every stream read as it comes
  (one thread drains them all); each must have received the phase build's `build.finished`;
- event streams and log follows: half of each.

and, in each phase: --requests authenticated GETs of /api/v1/builds?limit=20 one after
another (p50, p99, max), and one build of N trivial packages from POST to every job success.

Run: /work/main/.venv/bin/python bench/watchers.py [--connections N] [--packages N]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import _common as bc
import requests

from common.messages import PROTOCOL_VERSION
from tests.integration.farm import (
    PASSWORD,
    Master,
    RedisServer,
    Worker,
    free_port,
    wait_for,
    write_config,
)


def write_definitions(folder: Path, count: int, version: str) -> list[str]:
    names = []
    for i in range(count):
        name = f"watch{i:04d}"
        (folder / f"{name}.yaml").write_text(
            f"package:\n  name: {name}\n  version: '{version}'\n  architecture: all\n"
            f"  description: watcher benchmark package {i}\n"
            "  maintainer: pkgfarm bench <bench@example.org>\n"
            f"build: |\n  mkdir -p \"$DESTDIR/usr/share/{name}\"\n"
            f"  echo {i} > \"$DESTDIR/usr/share/{name}/n\"\n")
        names.append(name)
    return names


@contextlib.contextmanager
def slow_clients(master: Master, count: int) -> Iterator[None]:
    host, port = master.url.split("//", 1)[1].split(":")
    auth = base64.b64encode(f"admin:{PASSWORD}".encode())
    sockets = []
    for i in range(count):
        s = socket.create_connection((host, int(port)), timeout=10)
        if i % 2:
            s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: bench\r\n")
        else:
            s.sendall(b"PUT /api/v1/upload HTTP/1.1\r\nHost: bench\r\nContent-Length: 9999999\r\n"
                      b"Authorization: Basic " + auth + b"\r\n\r\nsome")
        sockets.append(s)
    stop = threading.Event()

    def dribble() -> None:
        while not stop.wait(2):
            for s in sockets[1::2]:
                with contextlib.suppress(OSError):
                    s.sendall(b"X-Slow: 1\r\n")

    thread = threading.Thread(target=dribble, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        for s in sockets:
            s.close()


@contextlib.contextmanager
def log_follows(master: Master, count: int) -> Iterator[None]:
    job = master.api("POST", "/api/v1/jobs", user="worker", json={
        "package": "watch-follow", "version": "1.0-1", "arch": "all", "worker": "bench",
        "protocol": PROTOCOL_VERSION}).json()
    url = f"{master.url}/api/v1/builds/{job['build_id']}/packages/watch-follow/log"
    streams = []
    for _ in range(count):
        resp = requests.get(url, params={"follow": "1"}, auth=("admin", PASSWORD),
                            stream=True, timeout=30)
        assert resp.status_code == 200, resp.text
        streams.append(resp)
    try:
        yield
    finally:
        for resp in streams:
            resp.close()
        master.api("POST", f"/api/v1/builds/{job['build_id']}/cancel")


@contextlib.contextmanager
def event_streams(master: Master, count: int) -> Iterator[None]:
    """``count`` open event streams, read continuously; at the end each must have seen a
    build.finished (the phase's build)."""
    host, port = master.url.split("//", 1)[1].split(":")
    auth = base64.b64encode(f"reader:{PASSWORD}".encode())
    sockets = []
    for _ in range(count):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream"
                  b"\r\nAuthorization: Basic " + auth + b"\r\n\r\n")
        sockets.append(s)
    received = {s.fileno(): b"" for s in sockets}
    for s in sockets:
        head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        received[s.fileno()] = head
        s.setblocking(False)
    stop = threading.Event()

    def drain() -> None:
        selector = selectors.DefaultSelector()
        for s in sockets:
            selector.register(s, selectors.EVENT_READ)
        while not stop.is_set():
            for key, _ in selector.select(timeout=0.2):
                with contextlib.suppress(BlockingIOError):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    # keep only the tail: enough to find the last event's name
                    received[key.fd] = (received[key.fd] + data)[-4096:] if data else \
                        received[key.fd]
                    if b"event: build.finished" in data:
                        finished.add(key.fd)
        selector.close()

    finished: set[int] = set()
    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    try:
        yield
        wait_for(lambda: len(finished) == count, 30,
                 f"build.finished on all {count} event streams")
    finally:
        stop.set()
        thread.join(timeout=10)
        for s in sockets:
            s.close()


@contextlib.contextmanager
def streams_and_follows(master: Master, count: int) -> Iterator[None]:
    with event_streams(master, count // 2), log_follows(master, count - count // 2):
        yield


def latencies(master: Master, count: int) -> list[float]:
    session = requests.Session()
    session.auth = ("admin", PASSWORD)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        resp = session.get(master.url + "/api/v1/builds", params={"limit": 20}, timeout=30)
        times.append(time.perf_counter() - start)
        assert resp.status_code == 200
    return times


def build_all(master: Master, names: list[str]) -> float:
    start = time.perf_counter()
    build_id = master.submit(names)
    build = master.wait_build(build_id, timeout=600)
    assert build["status"] == "success", build["status"]
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--packages", type=int, default=40)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    with bc.temporary_folder("pkgfarm-watchers-", args.keep) as work:
        return run_benchmark(work, args)


def run_benchmark(work: Path, args: argparse.Namespace) -> int:
    defs = work / "defs"
    defs.mkdir()
    broker = RedisServer(work / "redis")
    port = free_port()
    config = write_config(
        work / "config.yaml", data_dir=work / "data", port=port, broker_url=broker.url,
        package_paths=[defs], architectures=("amd64",),
        extra_master={"lease_seconds": 900},
        extra_worker={"environment": "host", "sandbox": "none", "install_build_depends": False})
    master = Master(config, port, work / "master.log")
    workers = [Worker(config, f"watch-w{i}", ["amd64"], work / f"w{i}.log") for i in (1, 2)]
    phases: list[tuple[str, Callable[[], contextlib.AbstractContextManager[None]]]] = [
        ("none", contextlib.nullcontext),
        (f"{args.connections} slow clients", lambda: slow_clients(master, args.connections)),
        (f"{args.connections} followed logs", lambda: log_follows(master, args.connections)),
        (f"{args.connections} event streams",
         lambda: event_streams(master, args.connections)),
        (f"{args.connections // 2} event streams + {args.connections - args.connections // 2} "
         "followed logs", lambda: streams_and_follows(master, args.connections)),
    ]
    results = []
    started: list[Master | Worker | RedisServer] = []
    try:
        for part in (broker, master, *workers):
            part.start()
            started.append(part)
        wait_for(lambda: len(master.api("GET", "/api/v1/workers").json()["workers"]) == 2,
                 60, "the workers")
        for i, (label, phase) in enumerate(phases):
            names = write_definitions(defs, args.packages, f"1.{i + 1}")
            bc.log(f"phase {label}")
            with phase():
                times = latencies(master, args.requests)
                build_time = build_all(master, names)
            results.append((label, times, build_time))
    finally:
        for part in reversed(started):
            part.stop()

    base_p99 = bc.percentile(results[0][1], 99)
    base_build = results[0][2]
    print()
    print(f"# watchers: API latency and build throughput with {args.connections} connections "
          "open")
    print(f"machine: {bc.machine_summary()}")
    print(f"master: 2 gunicorn processes (gevent); {args.requests} GETs of "
          f"/api/v1/builds?limit=20 per phase; {args.packages} trivial builds, 2 workers")
    print()
    rows = []
    for label, times, build_time in results:
        p99 = bc.percentile(times, 99)
        rows.append([label, bc.fmt_seconds(bc.median(times)), bc.fmt_seconds(p99),
                     bc.fmt_seconds(max(times)), f"{p99 / base_p99:.2f}x",
                     f"{build_time:.1f} s", f"{args.packages / build_time:.1f}",
                     f"{base_build / build_time:.2f}x"])
    print(bc.table(["open connections", "API p50", "API p99", "API max", "p99 vs none",
                    "builds", "builds/s", "throughput vs none"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Uploading one 1 GiB .deb with curl: the pkgfarm master vs a plain stream-to-disk server.

Set-up (not timed): a file of pseudo-random data (os.urandom) packed by `dpkg-deb -Znone` into a
.deb of about 1 GiB (a new version for each run, so every pkgfarm upload publishes); a
redis-server and the master under gunicorn (`master serve`, started with the helpers of
tests.integration.farm, max_upload_bytes set above the archive's size); and a minimal HTTP
server written here with the standard library (this script run with --serve-plain) that reads
the body from the socket in 1 MiB chunks and writes it to a file, nothing else.

Timed, --runs times each, the two servers alternating which goes first:
`curl -T FILE -H 'Expect:' -u admin:… http://127.0.0.1:PORT/api/v1/upload?filename=…&sha256=…`.

- total: curl's time_total (until the response arrived);
- wire: from starting curl until the last byte of the body was written by the server (the
  mtime of the received file: pkgfarm renames its incoming file into the pool, which keeps the
  mtime of its last write); the rest of pkgfarm's total is its checking and publishing;
- the master's own figure for the request, from gunicorn's access log;
- the RSS of the master's process tree (the `master serve` arbiter, its gunicorn workers and
  whatever they start, such as dpkg-deb), read from /proc every 50 ms: idle before the upload
  and peak during it.

Run: /work/main/.venv/bin/python bench/upload.py [--size-mib N] [--runs N]
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import _common as bc

from tests.integration.farm import (
    PASSWORD,
    Master,
    RedisServer,
    free_port,
    stop_process,
    wait_for,
    write_config,
)

CHUNK = 1024 * 1024
NAME = "bench-upload"
SAMPLE_INTERVAL = 0.05


# -- the plain server --------------------------------------------------------------------------


class PlainHandler(http.server.BaseHTTPRequestHandler):
    """Streams a PUT or POST body to a file in the server's folder; nothing else."""

    protocol_version = "HTTP/1.1"
    folder = Path()

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        path = self.folder / f"upload-{time.monotonic_ns()}.bin"
        remaining = length
        with open(path, "wb") as out:
            while remaining > 0:
                chunk = self.rfile.read(min(CHUNK, remaining))
                if not chunk:
                    break
                out.write(chunk)
                remaining -= len(chunk)
        body = json.dumps({"path": str(path), "size": length - remaining}).encode()
        self.send_response(201 if remaining == 0 else 400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_plain(port: int, folder: Path) -> None:
    PlainHandler.folder = folder
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), PlainHandler)
    server.serve_forever()


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class MemorySampler:
    """Samples the summed RSS of a process tree every 50 ms in a thread."""

    pid: int
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # time, tree, gunicorn
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> tuple[int, int]:
        tree = bc.process_tree(self.pid)
        total = gunicorn = 0
        for p in tree:
            rss = bc.rss_bytes(p)
            total += rss
            if p == self.pid or bc.comm(p).startswith(("gunicorn", "master")):
                gunicorn += rss
        return total, gunicorn

    def start(self) -> None:
        self._stop.clear()
        self.samples = []

        def loop() -> None:
            while not self._stop.is_set():
                total, gunicorn = self.sample()
                self.samples.append((time.time(), total, gunicorn))
                self._stop.wait(SAMPLE_INTERVAL)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> list[tuple[float, int, int]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.samples


@dataclass
class Upload:
    total: float  # curl's time_total
    wire: float  # start of curl until the server wrote the last byte
    server_ms: float | None = None  # gunicorn's access log figure
    peak_tree: int = 0
    peak_gunicorn: int = 0
    status: int = 0


CURL_FORMAT = "%{http_code} %{time_total} %{speed_upload} %{size_upload}"


def curl_upload(deb: Path, url: str) -> tuple[int, float, float, str, float]:
    """Upload with curl; returns (status, time_total, speed, response body, wall start)."""
    out = deb.parent / "curl-response.json"
    args = ["curl", "-sS", "-o", str(out), "-w", CURL_FORMAT, "-H", "Expect:",
            "-u", f"admin:{PASSWORD}", "-T", str(deb), url]
    start = time.time()
    result = subprocess.run(args, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"curl failed: {result.stderr}")
    status, total, speed, size = result.stdout.split()
    if int(float(size)) != deb.stat().st_size:
        raise RuntimeError(f"curl sent {size} bytes of {deb.stat().st_size}")
    return int(status), float(total), float(speed), out.read_text(), start


def build_deb(root: Path, out: Path, version: str) -> None:
    (root / "DEBIAN/control").write_text(
        f"Package: {NAME}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: pkgfarm benchmarks <bench@example.org>\n"
        "Description: one large archive for the upload benchmark\n"
        " Pseudo-random data, stored uncompressed.\n")
    bc.run(["dpkg-deb", "-Znone", "--root-owner-group", "--build", root, out])


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 * CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def access_log_ms(log: Path, seen: int) -> tuple[float | None, int]:
    """The duration gunicorn logged for the newest upload request after ``seen`` bytes."""
    text = log.read_bytes()[seen:].decode(errors="replace")
    found = re.findall(r'"PUT /api/v1/upload\?[^"]*" (\d+) \S+ (\d+)ms', text)
    return (float(found[-1][1]) if found else None), seen + len(text.encode())


# -- the benchmark -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mib", type=int, default=1024,
                        help="size of the archive's payload in MiB (default 1024)")
    parser.add_argument("--runs", type=int, default=5, help="uploads per server (default 5)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--serve-plain", nargs=2, metavar=("PORT", "FOLDER"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_plain:
        serve_plain(int(args.serve_plain[0]), Path(args.serve_plain[1]))
        return 0
    if args.size_mib < 1 or args.runs < 1:
        parser.error("--size-mib and --runs must be at least 1")
    for tool in ("curl", "dpkg-deb", "redis-server"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is missing")
    with bc.temporary_folder("pkgfarm-bench-upload-", keep=args.keep) as work:
        return run_benchmark(work, args)


def run_benchmark(work: Path, args: argparse.Namespace) -> int:
    size = args.size_mib * CHUNK
    root = work / "root"
    (root / "DEBIAN").mkdir(parents=True)
    blob = root / "usr/share" / NAME / "blob"
    blob.parent.mkdir(parents=True)
    bc.log(f"writing {args.size_mib} MiB of pseudo-random data")
    with open(blob, "wb") as fh:
        for _ in range(args.size_mib // 16):
            fh.write(os.urandom(16 * CHUNK))
        fh.write(os.urandom((args.size_mib % 16) * CHUNK))

    redis = RedisServer(work / "redis")
    port = free_port()
    data_dir = work / "data"
    (work / "defs").mkdir()
    config = write_config(work / "config.yaml", data_dir=data_dir, port=port,
                          broker_url=redis.url, package_paths=[work / "defs"],
                          architectures=("amd64",),
                          extra_master={"max_upload_bytes": 2 * size + 64 * CHUNK})
    master = Master(config, port, work / "master.log")
    plain_dir = work / "plain"
    plain_dir.mkdir()
    plain_port = free_port()
    plain: subprocess.Popen[bytes] | None = None
    results: dict[str, list[Upload]] = {"pkgfarm": [], "plain": []}
    idle: list[int] = []
    idle_gunicorn: list[int] = []
    plain_peak = 0
    try:
        redis.start()
        master.start()
        plain = subprocess.Popen([sys.executable, __file__, "--serve-plain", str(plain_port),
                                  str(plain_dir)], stdin=subprocess.DEVNULL)
        wait_for(lambda: _port_open(plain_port), 15, "the plain server")
        sampler = MemorySampler(master.proc.pid if master.proc else 0)
        plain_sampler = MemorySampler(plain.pid)
        log_seen = (work / "master.log").stat().st_size
        for run in range(args.runs):
            version = f"1.0-{run + 1}"
            deb = work / f"{NAME}_{version}_all.deb"
            bc.log(f"run {run + 1}/{args.runs}: building {deb.name} with dpkg-deb -Znone")
            build_deb(root, deb, version)
            sha = sha256_of(deb)
            order = ["plain", "pkgfarm"] if run % 2 == 0 else ["pkgfarm", "plain"]
            for target in order:
                if target == "pkgfarm":
                    # Idle baseline: two seconds of samples just before the upload.
                    sampler.start()
                    time.sleep(2)
                    before = sampler.stop()
                    idle += [s[1] for s in before]
                    idle_gunicorn += [s[2] for s in before]
                    sampler.start()
                    url = (f"{master.url}/api/v1/upload?filename={deb.name}&sha256={sha}")
                    status, total, _speed, body, start = curl_upload(deb, url)
                    during = sampler.stop()
                    if status != 201:
                        raise RuntimeError(f"pkgfarm answered {status}: {body}")
                    pool = data_dir / "repo" / json.loads(body)["pool_path"]
                    wire = pool.stat().st_mtime - start
                    server_ms, log_seen = access_log_ms(work / "master.log", log_seen)
                    results["pkgfarm"].append(Upload(
                        total=total, wire=wire, server_ms=server_ms,
                        peak_tree=max(s[1] for s in during),
                        peak_gunicorn=max(s[2] for s in during), status=status))
                else:
                    plain_sampler.start()
                    status, total, _speed, body, start = curl_upload(
                        deb, f"http://127.0.0.1:{plain_port}/api/v1/upload?filename={deb.name}")
                    during = plain_sampler.stop()
                    if status != 201:
                        raise RuntimeError(f"the plain server answered {status}: {body}")
                    received = Path(json.loads(body)["path"])
                    wire = received.stat().st_mtime - start
                    plain_peak = max(plain_peak, *(s[1] for s in during))
                    results["plain"].append(Upload(total=total, wire=wire, status=status))
                    received.unlink()
                bc.log(f"  {target}: {size / CHUNK / results[target][-1].total:.0f} MiB/s "
                       f"(total {total:.2f} s, wire {results[target][-1].wire:.2f} s)")
            if run < args.runs - 1:
                deb.unlink()
        steps = server_steps(deb, work)
        deb.unlink()
    finally:
        if plain is not None:
            stop_process(plain)
        master.stop()
        redis.stop()

    report(args, results, idle, idle_gunicorn, plain_peak, steps, size)
    return 0


def server_steps(deb: Path, work: Path) -> list[list[str]]:
    """The master's checks of an upload, timed one by one on the same archive (page cache warm):
    which part of the time after the wire they account for."""
    def digests() -> None:
        md5 = hashlib.md5(usedforsecurity=False)
        sha1 = hashlib.sha1(usedforsecurity=False)
        sha256 = hashlib.sha256()
        with open(deb, "rb") as fh:
            while chunk := fh.read(CHUNK):
                md5.update(chunk)
                sha1.update(chunk)
                sha256.update(chunk)

    def copy_fsync() -> None:
        dest = work / "fsync-test.bin"
        shutil.copyfile(deb, dest)
        with open(dest, "rb") as fh:
            os.fsync(fh.fileno())
        dest.unlink()

    rows = []
    for label, fn in (
        ("md5 + sha1 + sha256 of the file, one pass (Repository._digest_file)", digests),
        ("dpkg-deb --field (debrepo.inspect)",
         lambda: bc.run(["dpkg-deb", "--field", deb])),
        ("dpkg-deb --contents, reads the whole data member (debrepo.inspect)",
         lambda: bc.run(["dpkg-deb", "--contents", deb])),
        ("copy + fsync of the same size (cf. LocalStorage.put_file's fsync)", copy_fsync),
    ):
        samples = [bc.timed(fn) for _ in range(3)]
        rows.append([label, bc.fmt_seconds(bc.median(samples))])
    return rows


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def report(args: argparse.Namespace, results: dict[str, list[Upload]], idle: list[int],
           idle_gunicorn: list[int], plain_peak: int, steps: list[list[str]], size: int
           ) -> None:
    mib = size / CHUNK
    deb_mib = mib  # payload; the archive adds a few KiB of headers
    ours, base = results["pkgfarm"], results["plain"]

    def med(values: list[float]) -> float:
        return bc.median(values)

    p_total, p_wire = med([u.total for u in ours]), med([u.wire for u in ours])
    b_total, b_wire = med([u.total for u in base]), med([u.wire for u in base])
    server_ms = [u.server_ms for u in ours if u.server_ms is not None]
    print()
    print(f"# upload: one {deb_mib:.0f} MiB .deb (dpkg-deb -Znone) with curl -T, "
          f"{args.runs} runs each, median")
    print(f"machine: {bc.machine_summary()}")
    print()
    rows = [
        ["plain stream-to-disk server", f"{b_total:.2f} s", f"{mib / b_total:.0f} MiB/s",
         f"{b_wire:.2f} s", f"{mib / b_wire:.0f} MiB/s", "—", "1.00 (reference)"],
        ["pkgfarm master (PUT /api/v1/upload)", f"{p_total:.2f} s",
         f"{mib / p_total:.0f} MiB/s", f"{p_wire:.2f} s", f"{mib / p_wire:.0f} MiB/s",
         f"{med(server_ms) / 1000:.2f} s" if server_ms else "n/a",
         f"{b_total / p_total:.2f} total, {b_wire / p_wire:.2f} wire"],
    ]
    print(bc.table(["server", "total (curl)", "MiB/s total", "wire", "MiB/s wire",
                    "gunicorn log", "throughput vs plain"], rows))
    print()
    print(f"pkgfarm after the last byte (checks, fsync, publish, index): "
          f"{p_total - p_wire:.2f} s of {p_total:.2f} s")
    print(bc.table(["the master's steps after the wire, timed alone on the same file", "time"],
                   steps))
    print()
    idle_tree = max(idle) / CHUNK
    peak_tree = max(u.peak_tree for u in ours) / CHUNK
    idle_g = max(idle_gunicorn) / CHUNK
    peak_g = max(u.peak_gunicorn for u in ours) / CHUNK
    print(bc.table(["RSS, sampled every 50 ms", "idle (max over 2 s before each upload)",
                    "peak during the uploads", "growth"], [
        ["master tree (arbiter + gunicorn workers + children such as dpkg-deb)",
         f"{idle_tree:.1f} MiB", f"{peak_tree:.1f} MiB", f"{peak_tree - idle_tree:+.1f} MiB"],
        ["gunicorn processes only", f"{idle_g:.1f} MiB", f"{peak_g:.1f} MiB",
         f"{peak_g - idle_g:+.1f} MiB"],
        ["plain server (one process)", "—", f"{plain_peak / CHUNK:.1f} MiB", "—"],
    ]))
    print()
    goal = b_total / p_total
    print(f"goal: pkgfarm throughput within 80% of the plain upload: {goal:.2f} of it (total) "
          f"-> {'met' if goal >= 0.8 else 'NOT met'}; wire only {b_wire / p_wire:.2f}")
    print(f"goal: memory flat: peak - idle = {peak_tree - idle_tree:+.1f} MiB for the tree, "
          f"{peak_g - idle_g:+.1f} MiB for gunicorn alone, for a {deb_mib:.0f} MiB upload")


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end latency: from POST /api/v1/builds of one trivial definition until a stock apt-get
downloads the new version.

Set-up (not timed): a redis-server, the master under gunicorn and two `worker run` processes
(concurrency 1, `environment: host`, `sandbox: none`), started with the helpers of
tests.integration.farm and stopped by their PIDs; a stock apt-get with a throwaway state
(`AptClient`) pointed at the master's /repo.

Each of --runs runs writes the definition with a new version, POSTs it, and then, at the same
time, polls the API every 50 ms until the job says success, and runs `apt-get update` +
`apt-get download NAME=VERSION` in a loop until the download succeeds. Both moments are
measured from the start of the POST. Each run starts just after a new wall-clock second
begins, so that its index write never falls in the same second as the previous run's: the
master serves the index with a Last-Modified of whole seconds, and an apt-get that fetched an
index written earlier in the same second gets 304 Not Modified for the newer one
(docs/BENCHMARKS.md). --back-to-back starts the runs at once instead (farm only, no baseline)
and counts the runs in which apt-get never saw the new version within --grace seconds.

Baseline, measured in the same runs: the same package made directly (the build script with
bash, then dpkg-deb, as bench/dispatch.py does), put into a plain folder repository, indexed with
`apt-ftparchive packages` + gzip + `apt-ftparchive release`, served by `python -m http.server`,
and fetched by another throwaway apt-get with the same loop: the floor for "request to
downloadable" without a farm.

Run: /work/main/.venv/bin/python bench/latency.py [--runs N]
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import _common as bc
import dispatch
from dispatch import build_direct, wait_until_marked

from tests.integration.farm import (
    AptClient,
    Master,
    RedisServer,
    Worker,
    free_port,
    stop_process,
    wait_for,
    write_config,
)

NAME = "bench-latency"
API_POLL = 0.05


def write_definition(folder: Path, version: str) -> None:
    (folder / f"{NAME}.yaml").write_text(
        "package:\n"
        f"  name: {NAME}\n"
        f"  version: '{version}'\n"
        "  release: 1\n"
        "  architecture: all\n"
        "  description: |\n"
        "    Trivial package for the latency benchmark\n"
        "    Made by bench/latency.py.\n"
        "  maintainer: pkgfarm benchmarks <bench@example.org>\n"
        "build: |\n"
        f"  {dispatch.BUILD_LINE}\n")


class Deadline:
    """A deadline another thread may bring forward."""

    def __init__(self, at: float) -> None:
        self.at = at

    def passed(self) -> bool:
        return time.perf_counter() >= self.at


def apt_until_downloaded(apt: AptClient, spec: str, start: float, deadline: Deadline
                         ) -> tuple[float, int] | None:
    """Loop apt-get update + download until the download works: (seconds since start, loops),
    or None if the deadline passed first."""
    tries = 0
    while not deadline.passed():
        tries += 1
        apt.run("update", check=False)
        if apt.run("download", spec, check=False).returncode == 0:
            done = time.perf_counter() - start
            for f in (apt.root / "downloads").iterdir():
                f.unlink()
            return done, tries
    return None


def farm_run(master: Master, apt: AptClient, version: str, timeout: float, grace: float
             ) -> tuple[float, tuple[float, int] | None]:
    """(API success after, (apt download after, apt loops) or None) for one POST.

    apt-get gets ``grace`` seconds after the API's success; a run in which it still cannot
    download the new version is counted as missed (two index writes in one second).
    """
    spec = f"{NAME}={version}-1"
    found: list[tuple[float, int] | None] = []
    errors: list[Exception] = []
    start = time.perf_counter()
    deadline = Deadline(start + timeout)

    def poll_apt() -> None:
        try:
            found.append(apt_until_downloaded(apt, spec, start, deadline))
        except Exception as exc:
            errors.append(exc)

    build_id = master.submit([NAME])
    watcher = threading.Thread(target=poll_apt)
    watcher.start()
    api_done = None
    try:
        while time.perf_counter() < start + timeout:
            job = master.api("GET", f"/api/v1/builds/{build_id}").json()["jobs"][0]
            if job["status"] == "success":
                api_done = time.perf_counter() - start
                deadline.at = min(deadline.at, start + api_done + grace)
                break
            if job["status"] in ("failed", "dep-failed", "cancelled"):
                raise RuntimeError(f"the build failed: {job}")
            time.sleep(API_POLL)
    finally:
        if api_done is None:
            deadline.at = 0.0
        watcher.join()
    if api_done is None or errors or not found:
        raise RuntimeError(f"run {version} did not finish: {errors}")
    return api_done, found[0]


def next_second() -> None:
    """Sleep until just after the wall clock's next whole second."""
    now = time.time()
    time.sleep(int(now) + 1.02 - now)


class PlainRepository:
    """A folder repository indexed by apt-ftparchive, served by python -m http.server."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pool = root / "pool/main/b" / NAME
        self.pool.mkdir(parents=True)
        self.binary = root / "dists/stable/main/binary-amd64"
        self.binary.mkdir(parents=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(self.port),
             "--directory", str(self.root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        wait_for(lambda: _port_open(self.port), 15, "the plain http.server")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def publish(self, deb: Path) -> None:
        shutil.move(deb, self.pool / deb.name)
        packages = bc.run(["apt-ftparchive", "packages", "pool"], cwd=self.root).stdout
        (self.binary / "Packages").write_bytes(packages)
        (self.binary / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
        release = bc.run(["apt-ftparchive", "-oAPT::FTPArchive::Release::Suite=stable",
                          "-oAPT::FTPArchive::Release::Codename=stable", "release",
                          "dists/stable"], cwd=self.root).stdout
        (self.root / "dists/stable/Release").write_bytes(release)


def baseline_run(repo: PlainRepository, apt: AptClient, version: str, work: Path,
                 timeout: float) -> float:
    start = time.perf_counter()
    build_direct((NAME, f"{version}-1", str(work)))
    repo.publish(work / f"{NAME}_{version}-1_all.deb")
    result = apt_until_downloaded(apt, f"{NAME}={version}-1", start, Deadline(start + timeout))
    if result is None:
        raise RuntimeError(f"the baseline's apt-get never downloaded {version}")
    return result[0]


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=50, help="builds measured (default 50)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--grace", type=float, default=20.0,
                        help="seconds apt-get gets after the API's success (default 20)")
    parser.add_argument("--back-to-back", action="store_true",
                        help="start each run at once, not in a new wall-clock second")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.workers < 1:
        parser.error("--runs and --workers must be at least 1")
    for tool in ("apt-get", "apt-ftparchive", "dpkg-deb", "redis-server"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is missing")
    with bc.temporary_folder("pkgfarm-bench-latency-", keep=args.keep) as work:
        return run_benchmark(work, args)


def run_benchmark(work: Path, args: argparse.Namespace) -> int:
    defs = work / "defs"
    defs.mkdir()
    broker = RedisServer(work / "redis")
    port = free_port()
    config = write_config(
        work / "config.yaml", data_dir=work / "data", port=port, broker_url=broker.url,
        package_paths=[defs], architectures=("amd64",),
        extra_worker={"environment": "host", "sandbox": "none", "concurrency": 1,
                      "install_build_depends": False})
    master = Master(config, port, work / "master.log")
    workers = [Worker(config, f"bench-l{i + 1}", ["amd64"], work / f"worker{i + 1}.log")
               for i in range(args.workers)]
    plain = PlainRepository(work / "plain")
    started: list[RedisServer | Master | Worker | PlainRepository] = []
    farm_api: list[float] = []
    farm_apt: list[float] = []
    tries: list[int] = []
    missed: list[str] = []
    base: list[float] = []
    try:
        for part in (broker, master, *workers, plain):
            part.start()
            started.append(part)
        wait_until_marked(broker.url)
        apt = AptClient(work / "apt", f"deb [trusted=yes] {master.url}/repo stable main",
                        ("amd64",))
        plain_apt = AptClient(work / "apt-plain",
                              f"deb [trusted=yes] http://127.0.0.1:{plain.port} stable main",
                              ("amd64",))
        (work / "direct").mkdir()
        for run in range(args.runs):
            version = f"1.{run + 1}"
            write_definition(defs, version)
            if not args.back_to_back:
                next_second()
            api_t, apt_result = farm_run(master, apt, version, timeout=300, grace=args.grace)
            farm_api.append(api_t)
            if apt_result is None:
                missed.append(version)
                apt_text = f"apt-get still had the old index {args.grace:.0f} s later (missed)"
            else:
                farm_apt.append(apt_result[0])
                tries.append(apt_result[1])
                apt_text = f"apt download {apt_result[0]:.2f} s ({apt_result[1]} apt loops)"
            base_text = ""
            if not args.back_to_back:
                next_second()
                base.append(baseline_run(plain, plain_apt, version, work / "direct",
                                         timeout=60))
                base_text = f"; baseline {base[-1]:.2f} s"
            bc.log(f"run {run + 1}/{args.runs}: API success {api_t:.2f} s, {apt_text}"
                   + base_text)
    finally:
        for part in reversed(started):
            part.stop()

    def row(label: str, values: list[float], reference: list[float] | None) -> list[str]:
        if not values:
            return [label, "n/a", "n/a", "n/a", "n/a", "n/a"]
        if reference is None:
            ratio = "1.0x (reference)"
        elif reference:
            ratio = f"{bc.median(values) / bc.median(reference):.1f}x"
        else:
            ratio = "n/a"
        return [label, bc.fmt_seconds(bc.median(values)),
                bc.fmt_seconds(bc.percentile(values, 95)), bc.fmt_seconds(min(values)),
                bc.fmt_seconds(max(values)), ratio]

    print()
    print(f"# latency: POST of one trivial definition -> downloadable by apt-get, "
          f"{args.runs} runs, {args.workers} workers")
    print(f"machine: {bc.machine_summary()}")
    print()
    print(bc.table(["from the start of the POST until", "median", "p95", "min", "max",
                    "median vs baseline"], [
        row("baseline: dpkg-deb + apt-ftparchive + http.server, apt-get downloads it", base,
            None),
        row("pkgfarm: the API reports the job success", farm_api, base),
        row(f"pkgfarm: apt-get update + download succeeds ({len(farm_apt)} runs)", farm_apt,
            base),
    ]))
    print()
    if tries:
        print(f"apt-get update + download loops per farm run: median {bc.median(tries):.0f}, "
              f"max {max(tries)}; the apt figure is the end of the first successful download, "
              "so it includes up to one loop of polling granularity")
    print(f"runs started {'back to back' if args.back_to_back else 'each in a new second'}; "
          f"runs where apt-get never saw the new version ({args.grace:.0f} s after the API's "
          f"success): {len(missed)} of {args.runs}" + (f" ({', '.join(missed)})" if missed
                                                     else ""))
    slow = sum(1 for v in farm_api if v > 3.0)
    print(f"farm runs whose API success took more than 3 s: {slow} of {args.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

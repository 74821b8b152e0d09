"""500 trivial builds through the whole farm vs the same 500 archives made by dpkg-deb directly.

Set-up (not timed): N YAML definitions in a temporary package_paths folder (architecture all,
a one-line build script), a redis-server, the master under gunicorn and two `worker run`
processes (concurrency 1 each, `environment: host`, `sandbox: none`), all started with the
helpers of tests.integration.farm and stopped by their PIDs.

Timed:
- farm: from POST /api/v1/builds of the N packages (one build) until the API reports every job
  succeeded (polled every 0.25 s). Every farm run writes the definitions with a new version, so
  each run builds and publishes N new archives.
- baseline: the same N builds done directly, 2 at a time (a pool of 2 processes): a fresh
  folder, the same build script run with bash, the DEBIAN/control and md5sums pkgfarm writes,
  and `dpkg-deb --root-owner-group -Zxz --build` as the worker calls it. No queue, no HTTP, no
  upload, no index.

Overhead per build = (farm - baseline) * 2 / N: the extra wall time, times the two build slots
that were busy (or idle) for it, shared by the N builds; i.e. how much longer each build holds
a worker slot in the farm than on its own.

Run: /work/main/.venv/bin/python bench/dispatch.py [--packages N] [--runs N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

import _common as bc
import redis

from master.scheduler import BROKER_MARKER
from tests.integration.farm import (
    Master,
    RedisServer,
    Worker,
    free_port,
    wait_for,
    write_config,
)

SLOTS = 2
BUILD_LINE = ('mkdir -p "$DESTDIR/usr/share/doc/$PKGFARM_PACKAGE" && echo "built $PKGFARM_VERSION"'
              ' > "$DESTDIR/usr/share/doc/$PKGFARM_PACKAGE/marker"')


def name_of(i: int) -> str:
    return f"bench-d{i:04d}"


def write_definitions(folder: Path, count: int, version: str) -> list[str]:
    names = []
    for i in range(count):
        name = name_of(i)
        (folder / f"{name}.yaml").write_text(
            "package:\n"
            f"  name: {name}\n"
            f"  version: '{version}'\n"
            "  release: 1\n"
            "  architecture: all\n"
            "  description: |\n"
            "    Trivial package for the dispatch benchmark\n"
            "    Made by bench/dispatch.py.\n"
            "  maintainer: pkgfarm benchmarks <bench@example.org>\n"
            "build: |\n"
            f"  {BUILD_LINE}\n")
        names.append(name)
    return names


# -- baseline: the same builds without the farm ------------------------------------------------


def build_direct(args: tuple[str, str, str]) -> int:
    """One build as the worker does it, minus the farm: script, control, md5sums, dpkg-deb."""
    name, version, outdir = args
    with tempfile.TemporaryDirectory(dir=outdir) as tmp:
        work = Path(tmp)
        dest = work / "root"
        src = work / "sources"
        dest.mkdir()
        src.mkdir()
        script = work / "build.sh"
        script.write_text("set -eu\numask 022\n" + BUILD_LINE + "\n")
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
               "DESTDIR": str(dest), "PKGFARM_PACKAGE": name, "PKGFARM_VERSION": version,
               "PKGFARM_ARCH": "all", "DEB_HOST_ARCH": "amd64",
               "SOURCE_DATE_EPOCH": "1700000000"}
        subprocess.run(["bash", str(script)], cwd=src, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        (dest / "DEBIAN").mkdir(mode=0o755)
        dest.chmod(0o755)
        (dest / "DEBIAN/control").write_text(
            f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
            "Maintainer: pkgfarm benchmarks <bench@example.org>\nInstalled-Size: 1\n"
            "Section: misc\nPriority: optional\n"
            "Description: Trivial package for the dispatch benchmark\n"
            " Made by bench/dispatch.py.\n")
        sums = []
        for path in sorted(p for p in dest.rglob("*") if p.is_file() and "DEBIAN" not in p.parts):
            digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
            sums.append(f"{digest}  {path.relative_to(dest)}\n")
        (dest / "DEBIAN/md5sums").write_text("".join(sums))
        out = Path(outdir) / f"{name}_{version}_all.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(dest),
                        str(out)], check=True, stdout=subprocess.DEVNULL, env={**os.environ,
                                                                               **env})
    return out.stat().st_size


def _pid(_: int) -> int:
    return os.getpid()


def run_baseline(names: list[str], version: str, outdir: Path) -> float:
    outdir.mkdir(parents=True, exist_ok=True)
    jobs = [(name, version, str(outdir)) for name in names]
    with ProcessPoolExecutor(SLOTS) as pool:
        # Warm the pool's processes before the clock starts, as the farm's workers are warm.
        list(pool.map(_pid, range(SLOTS)))
        start = time.perf_counter()
        sizes = list(pool.map(build_direct, jobs))
        elapsed = time.perf_counter() - start
    if len(sizes) != len(names) or not all(sizes):
        raise RuntimeError("a direct build made no archive")
    shutil.rmtree(outdir)
    return elapsed


# -- the farm ----------------------------------------------------------------------------------


def run_farm(master: Master, names: list[str], timeout: float) -> dict[str, float]:
    start = time.perf_counter()
    build_id = master.submit(names)
    submitted = time.perf_counter() - start

    def all_done() -> dict | None:
        build = master.api("GET", f"/api/v1/builds/{build_id}").json()
        states = [j["status"] for j in build["jobs"]]
        bad = [j for j in build["jobs"] if j["status"] in ("failed", "dep-failed", "cancelled")]
        if bad:
            raise SystemExit(f"build {build_id}: {len(bad)} jobs did not succeed, e.g. {bad[0]}")
        return build if states.count("success") == len(names) else None

    build = wait_for(all_done, timeout, f"build {build_id} of {len(names)} packages",
                     interval=0.25)
    elapsed = time.perf_counter() - start
    if len(build["jobs"]) != len(names):
        raise RuntimeError(f"build {build_id} has {len(build['jobs'])} jobs, not {len(names)}")
    return {"total": elapsed, "submit": submitted}


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ (\S+?)\[\d+\]: (.*)$")


def worker_timeline(logs: list[Path]) -> dict[str, list[float]]:
    """From the workers' logs: for each message, how long it waited after it was received for a
    pool process to start it, how long the task ran (Celery's own figure; builds and stale
    messages apart), and how long the worker took to receive the next message after a task
    ended. The API's job times are whole seconds, too coarse for this."""
    waits: list[float] = []
    runs: list[float] = []
    stale_runs: list[float] = []
    fetches: list[float] = []
    stale: list[float] = []
    for path in logs:
        received = ended = None
        for line in path.read_text(errors="replace").splitlines():
            m = LOG_LINE.match(line)
            if not m:
                continue
            when = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            source, text = m[2], m[3]
            if source == "celery.worker.strategy" and text.endswith(" received"):
                received = when
                if ended is not None:
                    fetches.append(when - ended)
                    ended = None
            elif source == "worker.tasks" and received is not None:
                waits.append(when - received)
                received = None
                if "is stale; dropping the message" in text:
                    stale.append(when)
            elif source == "celery.app.trace" and " succeeded in " in text:
                seconds = float(text.split(" succeeded in ")[1].split("s:")[0])
                (stale_runs if text.endswith("'stale'") else runs).append(seconds)
                ended = when
    return {"wait": waits, "run": runs, "stale_run": stale_runs, "fetch": fetches,
            "stale": stale}


def wait_until_marked(url: str) -> None:
    """Wait until the master has set its marker in the (fresh) broker.

    Masters before commit 27f1c17 set it on their first housekeeping tick, 2 s after start, and
    took a build submitted before then for one whose broker had lost its data: they sent it
    again whole, and its first messages were dropped as stale. Waiting keeps that start-up
    effect out of the steady-state figure; on newer masters it returns at once.
    """
    client = redis.Redis.from_url(url)
    try:
        wait_for(lambda: client.exists(BROKER_MARKER), 30, "the master's broker marker")
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--packages", type=int, default=500,
                        help="definitions built in one build (default 500)")
    parser.add_argument("--runs", type=int, default=1,
                        help="farm runs, each with new versions (default 1)")
    parser.add_argument("--baseline-runs", type=int, default=3,
                        help="runs of the direct dpkg-deb loop (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    if min(args.packages, args.runs, args.baseline_runs) < 1:
        parser.error("--packages, --runs and --baseline-runs must be at least 1")
    with bc.temporary_folder("pkgfarm-bench-dispatch-", keep=args.keep) as work:
        return run_benchmark(work, args)


def run_benchmark(work: Path, args: argparse.Namespace) -> int:
    n = args.packages
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
    workers = [Worker(config, f"bench-w{i + 1}", ["amd64"], work / f"worker{i + 1}.log")
               for i in range(SLOTS)]
    farm: list[dict[str, float]] = []
    base: list[float] = []
    started: list[Master | Worker | RedisServer] = []
    try:
        for part in (broker, master, *workers):
            part.start()
            started.append(part)
        wait_until_marked(broker.url)
        runs = max(args.runs, args.baseline_runs)
        for run in range(runs):
            version = f"1.{run + 1}"
            names = write_definitions(defs, n, version)
            if run < args.baseline_runs:
                bc.log(f"baseline run {run + 1}: {n} direct builds, {SLOTS} at a time")
                base.append(run_baseline(names, f"{version}-1", work / "direct"))
                bc.log(f"  {base[-1]:.1f} s")
            if run < args.runs:
                bc.log(f"farm run {run + 1}: one build of {n} packages, {SLOTS} workers")
                farm.append(run_farm(master, names, timeout=max(600.0, n * 10.0)))
                bc.log(f"  {farm[-1]['total']:.1f} s")
    finally:
        for part in reversed(started):
            part.stop()

    farm_total = bc.median([f["total"] for f in farm])
    base_total = bc.median(base)
    overhead_ms = (farm_total - base_total) * SLOTS / n * 1000
    print()
    print(f"# dispatch: {n} trivial definitions (architecture all, one-line script), "
          f"{SLOTS} build slots")
    print(f"machine: {bc.machine_summary()}")
    print(f"farm: {len(farm)} run(s); baseline: {len(base)} run(s); medians")
    print()
    print(bc.table(["", "total", "per build (wall / N)", "builds/s", "ratio"], [
        ["baseline: bash script + dpkg-deb -Zxz, pool of 2 processes", f"{base_total:.1f} s",
         f"{base_total / n * 1000:.1f} ms", f"{n / base_total:.1f}", "1.0x (reference)"],
        ["pkgfarm: POST /api/v1/builds -> every job success (2 workers)", f"{farm_total:.1f} s",
         f"{farm_total / n * 1000:.1f} ms", f"{n / farm_total:.1f}",
         f"{farm_total / base_total:.1f}x the baseline's time"],
    ]))
    print()
    print(f"POST /api/v1/builds of {n} packages answered after "
          f"{bc.fmt_seconds(bc.median([f['submit'] for f in farm]))}; one direct build holds a "
          f"slot for {bc.fmt_seconds(base_total * SLOTS / n)} (baseline total * {SLOTS} / N)")
    timeline = worker_timeline([w.log for w in workers])
    rows = []
    for key, label in (("fetch", "task ended -> next message received by the worker"),
                       ("wait", "message received -> a pool process starts it"),
                       ("run", "build task run (claim, build, upload, report, publish)"),
                       ("stale_run", "stale message run (claim refused with 409, dropped)")):
        values = timeline[key]
        if values:
            rows.append([label, len(values), bc.fmt_seconds(bc.median(values)),
                         bc.fmt_seconds(bc.percentile(values, 95)), bc.fmt_seconds(max(values)),
                         sum(1 for v in values if v > 1.0), f"{sum(values):.1f} s"])
    print()
    print(bc.table(["per task, from the worker logs (all farm runs)", "count", "median", "p95",
                    "max", "> 1 s", "sum"], rows))
    messages = len(timeline["run"]) + len(timeline["stale_run"])
    print(f"messages run by the workers: {messages} for {n * len(farm)} jobs; "
          f"{len(timeline['stale'])} were refused at the claim as stale (the same attempt sent "
          "again) and dropped")
    print()
    print(f"overhead per build: (farm - baseline) * {SLOTS} slots / {n} = {overhead_ms:.0f} ms "
          "of worker-slot time per build")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What one build costs per package format: the build script once, then each format's packing.

A worker runs a definition's build script once per job, and a farm serving deb, rpm and pacman
makes three jobs of each definition and architecture. This measures, for one definition that
stages ``--files`` files, the whole build of each format (script + packing, as a job does it)
and the script alone, so the share of the repeated script shows.

    .venv/bin/python bench/formats_build.py --files 2000 --runs 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common.definition import parse_definition
from worker.build import build_definition

SCRIPT = """\
mkdir -p "$DESTDIR/usr/share/bench"
i=0
while [ $i -lt {files} ]; do
  head -c 4096 /dev/urandom > "$DESTDIR/usr/share/bench/f$i"
  i=$((i + 1))
done
"""


def definition(folder: Path, files: int) -> Path:
    (folder / "sources").mkdir(parents=True)
    path = folder / "package.yaml"
    script = SCRIPT.format(files=files).replace("\n", "\n  ")
    path.write_text(
        "package:\n  name: bench-formats\n  version: '1.0'\n  architecture: all\n"
        "  description: |\n    formats benchmark\n"
        "  maintainer: pkgfarm bench <bench@example.org>\n"
        f"build: |\n  {script}\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pkgfarm-bench-formats-"))
    try:
        defn = parse_definition(definition(root / "def", args.files), check_sources=False)
        times: dict[str, list[float]] = {"script only": [], "deb": [], "rpm": [], "pacman": []}
        for run in range(args.runs):
            dest = root / f"script-{run}"
            started = time.perf_counter()
            subprocess.run(["bash", "-euc", defn.build], env={"DESTDIR": str(dest),
                                                             "PATH": "/usr/bin:/bin"},
                           check=True)
            times["script only"].append(time.perf_counter() - started)
            for fmt in ("deb", "rpm", "pacman"):
                work = root / f"{fmt}-{run}"
                shutil.copytree(root / "def", work)
                started = time.perf_counter()
                with open(root / f"{fmt}-{run}.log", "w") as out:
                    build_definition(defn, "all", work, out, lambda _: None,
                                     timeout=600, install_deps=False, fmt=fmt)
                times[fmt].append(time.perf_counter() - started)
        script = statistics.median(times["script only"])
        print(f"{args.files} files of 4 KiB, median of {args.runs} runs")
        print(f"{'what':<14}{'median s':>10}{'vs script':>11}")
        for what, values in times.items():
            m = statistics.median(values)
            print(f"{what:<14}{m:>10.2f}{m / script:>10.1f}x")
        total = sum(statistics.median(times[f]) for f in ("deb", "rpm", "pacman"))
        print(f"three jobs: {total:.2f} s; one script run shared by three packings would be "
              f"{total - 2 * script:.2f} s ({(total - 2 * script) / total:.0%} of it)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The build-order rule, at the scheduler: a job waits for every package of its build set that
any alternative of its build dependencies names (master/scheduler.py), so it never builds
against a stale version of a package the same set is rebuilding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from common.config import settings_from_dict
from common.errors import Unprocessable
from master.scheduler import Scheduler
from master.store import PlannedJob, Store


def write(folder: Path, name: str, architecture: str, build_depends: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump({
        "package": {"name": name, "version": "1.0", "architecture": architecture,
                    "description": f"{name} for the build-order tests",
                    "maintainer": "Farm Tests <tests@example.org>"},
        "build_depends": build_depends,
        "build": "true\n"}))


def scheduler(tmp_path: Path, formats: tuple[str, ...] = ("deb",)) -> Scheduler:
    settings = settings_from_dict({
        "package_paths": [str(tmp_path / "defs")],
        "master": {"data_dir": str(tmp_path / "data")},
        "repository": {"architectures": ["amd64", "arm64"], "formats": list(formats)}})
    # Planning reads definitions and nothing else: no broker, no repository.
    return Scheduler(settings, Store(tmp_path / "state.db"), celery=None,  # type: ignore[arg-type]
                     repository=None)  # type: ignore[arg-type]


def waits(jobs: list[PlannedJob]) -> dict[tuple[str, str, str], set[tuple[str, str, str]]]:
    """Each job, as (package, arch, format), with the jobs it waits for."""
    def key(job: PlannedJob) -> tuple[str, str, str]:
        return job.package, job.arch, job.format

    return {key(j): {key(jobs[i]) for i in j.depends_on} for j in jobs}


def test_a_package_named_only_in_a_second_alternative_is_waited_for(tmp_path: Path) -> None:
    write(tmp_path / "defs", "app", "any", ["absent | lib"])
    write(tmp_path / "defs", "lib", "any", [])
    _, jobs = scheduler(tmp_path).plan(["app", "lib"], None)
    assert waits(jobs) == {
        ("lib", "amd64", "deb"): set(), ("lib", "arm64", "deb"): set(),
        ("app", "amd64", "deb"): {("lib", "amd64", "deb")},
        ("app", "arm64", "deb"): {("lib", "arm64", "deb")}}
    # The order of the request does not matter: lib's jobs come first.
    _, jobs = scheduler(tmp_path).plan(["lib", "app"], None)
    assert [j.package for j in jobs] == ["lib", "lib", "app", "app"]


def test_a_versioned_alternative_of_an_all_package(tmp_path: Path) -> None:
    write(tmp_path / "defs", "app", "any",
          ["absent (>= 2) | other | lib (>= 1.0)", "data | absent"])
    write(tmp_path / "defs", "lib", "all", [])
    write(tmp_path / "defs", "data", "any", [])
    _, jobs = scheduler(tmp_path).plan(["app", "lib", "data"], None)
    found = waits(jobs)
    for arch in ("amd64", "arm64"):
        assert found[("app", arch, "deb")] == {("lib", "all", "deb"), ("data", arch, "deb")}


def test_a_package_outside_the_set_is_not_waited_for(tmp_path: Path) -> None:
    """The control: with lib not in the set (or not named at all), nothing waits."""
    write(tmp_path / "defs", "app", "any", ["absent | lib"])
    write(tmp_path / "defs", "lib", "any", [])
    write(tmp_path / "defs", "tool", "any", ["absent | elsewhere"])
    _, jobs = scheduler(tmp_path).plan(["app", "tool"], None)
    assert all(not deps for deps in waits(jobs).values())
    _, jobs = scheduler(tmp_path).plan(["lib", "tool"], None)
    assert all(not deps for deps in waits(jobs).values())


def test_every_format_waits_for_the_build_hosts_jobs(tmp_path: Path) -> None:
    """Build environments install build dependencies as the build host's packages (deb):
    app's rpm job waits for lib's deb job of its architecture."""
    write(tmp_path / "defs", "app", "any", ["absent | lib"])
    write(tmp_path / "defs", "lib", "any", [])
    _, jobs = scheduler(tmp_path, ("deb", "rpm")).plan(["app", "lib"], "amd64")
    assert waits(jobs) == {
        ("lib", "amd64", "deb"): set(), ("lib", "amd64", "rpm"): set(),
        ("app", "amd64", "deb"): {("lib", "amd64", "deb")},
        ("app", "amd64", "rpm"): {("lib", "amd64", "deb")}}


def test_a_cycle_through_an_alternative_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "defs", "app", "any", ["absent | lib"])
    write(tmp_path / "defs", "lib", "any", ["app"])
    with pytest.raises(Unprocessable, match="cycle") as refused:
        scheduler(tmp_path).plan(["app", "lib"], None)
    cycle: Any = refused.value.details["cycle"]
    assert set(cycle) == {"app", "lib"}

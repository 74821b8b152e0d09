"""The event stream against a real farm: redis-server, the master under gunicorn with two
processes, and real workers; and the drain of a worker and the pause of a queue.

Every assertion is about what a client of GET /api/v1/events (an EventSource) would see.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import Farm
from tests.integration.farm import BIN, PASSWORD, JsonLines, make_deb, stop_process, wait_for
from tests.integration.sse import Message, Stream

WINDOW = 3600


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """Two master processes, two workers that both build amd64 and all."""
    f = Farm(tmp_path_factory.mktemp("events"),
             extra_master={"processes": 2, "events_window": WINDOW})
    try:
        f.start({"ev-a": ["amd64"], "ev-b": ["amd64"]})
        yield f
    finally:
        f.stop()


def newest(farm: Farm) -> int:
    assert farm.master is not None
    return int(farm.master.api("GET", "/api/v1/events/list", user="reader",
                               params={"limit": 1}).json()["newest_id"])


def all_events(farm: Farm, after: int = 0, **params: Any) -> list[dict[str, Any]]:
    """Every kept event after ``after``, page by page, through /events/list."""
    assert farm.master is not None
    out: list[dict[str, Any]] = []
    while True:
        page = farm.master.api("GET", "/api/v1/events/list", user="reader",
                               params={"after": after, "limit": 200, **params}).json()
        out += page["events"]
        if len(page["events"]) < 200:
            return out
        after = page["next_after"]


def finished(build_id: int) -> Any:
    return lambda got: any(m.event == "build.finished" and m.data["build_id"] == build_id
                           for m in got)


def of_build(messages: list[Message], build_id: int) -> list[tuple[str, str | None]]:
    return [(m.event, m.data.get("state") or m.data.get("package"))
            for m in messages if m.data.get("build_id") == build_id]


def test_one_build_in_order(farm):
    stream = Stream(farm.master.url, last_event_id=newest(farm))
    try:
        build_id = farm.master.submit(["itest-amd64"])
        got = stream.read_until(finished(build_id))
    finally:
        stream.close()
    assert of_build(got, build_id) == [
        ("build.created", None), ("job.queued", "itest-amd64"), ("job.started", "itest-amd64"),
        ("upload.accepted", None), ("job.finished", "success"), ("build.finished", "success")]
    by_kind = {m.event: m for m in got if m.data.get("build_id") == build_id}
    assert by_kind["build.created"].data["packages"] == ["itest-amd64"]
    assert by_kind["build.created"].data["requested_by"] == "admin"
    job_id = by_kind["job.queued"].data["job_id"]
    assert by_kind["build.created"].data["jobs"] == [
        {"id": job_id, "package": "itest-amd64", "version": "1.0-1", "arch": "amd64",
         "format": "deb"}]
    for kind in ("job.queued", "job.started", "job.finished"):
        assert by_kind[kind].data["format"] == "deb", kind
    assert by_kind["job.started"].data["worker"] in ("ev-a", "ev-b")
    done = by_kind["job.finished"].data
    assert done["worker"] == by_kind["job.started"].data["worker"]
    assert done["error"] is None and done["duration"] > 0
    assert by_kind["upload.accepted"].data["files"] == ["itest-amd64_1.0-1_amd64.deb"]
    assert by_kind["build.finished"].data["jobs"] == {"success": 1}
    # Every message's id is its event's, increasing; the publication updated the index.
    ids = [m.id for m in got]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(m.id == m.data["id"] for m in got)
    assert any(m.event == "index.updated" and m.data["format"] == "deb"
               and m.data["suites"] == ["stable"] for m in got)


def test_failed_build_and_its_restart_finish_once_each(farm):
    start = newest(farm)
    build_id = farm.master.submit(["itest-fail"])
    farm.master.wait_build(build_id)
    restart = farm.master.api("POST", f"/api/v1/builds/{build_id}/restart")
    assert restart.status_code == 200, restart.text
    farm.master.wait_build(build_id)
    wait_for(lambda: sum(e["kind"] == "build.finished"
                         for e in all_events(farm, start, build=build_id)) == 2, 30,
             "the restarted build's end")
    events = all_events(farm, start, build=build_id)
    ends = [e for e in events if e["kind"] == "build.finished"]
    assert [e["state"] for e in ends] == ["failed", "failed"]
    failures = [e for e in events if e["kind"] == "job.finished"]
    assert [e["attempt"] for e in failures] == [1, 2]
    assert all(e["state"] == "failed" and e["error"] for e in failures)
    assert [e["kind"] for e in events].count("job.queued") == 2


def master_processes(farm: Farm) -> dict[int, set[int]]:
    """Each gunicorn worker process of the master: the client ports it serves."""
    assert farm.master is not None and farm.master.proc is not None
    arbiter = farm.master.proc.pid
    children = [int(p) for p in Path(f"/proc/{arbiter}/task/{arbiter}/children")
                .read_text().split()]
    inodes = {inode: pid for pid in children for inode in socket_inodes(pid)}
    served: dict[int, set[int]] = {pid: set() for pid in children}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        local, remote, inode = cols[1], cols[2], int(cols[9])
        if int(local.split(":")[1], 16) == farm.master.port and inode in inodes:
            served[inodes[inode]].add(int(remote.split(":")[1], 16))
    return served


def test_events_reach_the_clients_of_every_master_process(farm):
    start = newest(farm)
    streams: list[Stream] = []
    try:
        # Open streams until both gunicorn processes serve at least one.
        for _ in range(40):
            streams.append(Stream(farm.master.url, last_event_id=start))
            served = master_processes(farm)
            if len(served) >= 2 and all(ports & {s.local_port() for s in streams}
                                        for ports in served.values()):
                break
        else:
            pytest.fail(f"40 streams, and not both master processes serve one: {served}")
        build_id = farm.master.submit(["itest-all"])
        seen = [of_build(s.read_until(finished(build_id)), build_id) for s in streams]
    finally:
        for s in streams:
            s.close()
    assert seen[0][-1] == ("build.finished", "success")
    assert all(s == seen[0] for s in seen), seen


def test_build_filter_and_kinds(farm):
    start = newest(farm)
    other = farm.master.submit(["itest-fail"])
    wanted = farm.master.submit(["itest-all"])
    stream = Stream(farm.master.url, last_event_id=start, params={"build": wanted})
    try:
        got = stream.read_until(finished(wanted))
    finally:
        stream.close()
    assert {m.data["build_id"] for m in got} == {wanted}
    farm.master.wait_build(other)
    ends = Stream(farm.master.url, params={"after": start, "kinds": "build.finished"})
    try:
        got = ends.read_until(lambda g: {m.data["build_id"] for m in g} >= {other, wanted})
    finally:
        ends.close()
    assert {m.event for m in got} == {"build.finished"}
    assert {m.data["build_id"]: m.data["state"] for m in got} == {other: "failed",
                                                                 wanted: "success"}


def test_credentials_and_bad_positions(farm):
    url = farm.master.url + "/api/v1/events"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, auth=("reader", "wrong"), timeout=10).status_code == 401
    for headers, params in (({"Last-Event-ID": "abc"}, {}), ({"Last-Event-ID": "-1"}, {}),
                            ({}, {"after": "x"}), ({}, {"kinds": "build.nope"}),
                            ({}, {"build": "0"})):
        resp = requests.get(url, headers=headers, params=params, auth=("reader", PASSWORD),
                            timeout=10)
        assert resp.status_code == 400, (headers, params, resp.text)
        assert resp.json()["error"]
    listing = requests.get(url + "/list", params={"after": "-3"}, auth=("reader", PASSWORD),
                           timeout=10)
    assert listing.status_code == 400


def test_reset_beyond_the_newest(farm):
    top = newest(farm)
    stream = Stream(farm.master.url, last_event_id=top + 1000)
    try:
        first = stream.read_until(lambda g: len(g) >= 1)[0]
        assert (first.event, first.data, first.id) == ("reset", top, top)
        build_id = farm.master.submit(["itest-all"])
        got = stream.read_until(finished(build_id))
    finally:
        stream.close()
    assert got[0].event == "build.created" and got[0].id == top + 1


def test_reset_after_the_window_pruned_the_events(farm):
    """Events that left the window: aged in the database as if a day had passed; the
    master's housekeeping prunes them, and a client asking for them gets a reset."""
    farm.master.submit(["itest-all"])
    wait_for(lambda: newest(farm) > 5, 60, "some events")
    old = newest(farm) - 2
    with sqlite3.connect(farm.data_dir / "state.db", timeout=30) as db:
        db.execute("UPDATE events SET at = at - ? WHERE id <= ?", (2 * WINDOW, old))
    wait_for(lambda: all_events(farm)[0]["id"] > old, 30, "the prune")
    listing = farm.master.api("GET", "/api/v1/events/list", user="reader",
                              params={"after": old - 3}).json()
    assert listing["complete"] is False
    stream = Stream(farm.master.url, last_event_id=old - 3)
    try:
        first = stream.read_until(lambda g: len(g) >= 1)[0]
    finally:
        stream.close()
    assert first.event == "reset" and first.data == listing["newest_id"]
    # Resuming from the newest pruned id is still whole: nothing after it is missing.
    assert farm.master.api("GET", "/api/v1/events/list", user="reader",
                           params={"after": old}).json()["complete"] is True


def test_reconnect_misses_nothing_across_a_master_restart(farm):
    start = newest(farm)
    first_build = farm.master.submit(["itest-slow"])
    stream = Stream(farm.master.url, last_event_id=start)
    seen = stream.read_until(lambda g: any(m.event == "job.started" for m in g))
    stream.close()  # the client drops in the middle of the build
    last = seen[-1].id
    farm.master.stop()  # ... and the master goes while the build goes on
    farm.master.start()
    second_build = farm.master.submit(["itest-all"])
    stream = Stream(farm.master.url, last_event_id=last)
    try:
        seen += stream.read_until(lambda g: finished(first_build)(g)
                                  and finished(second_build)(g))
    finally:
        stream.close()
    ids = [m.id for m in seen]
    assert len(ids) == len(set(ids)), "an event came twice"
    kept = [e["id"] for e in all_events(farm, start) if e["id"] <= ids[-1]]
    assert ids == kept, "the reconnected client missed events or got them out of order"
    assert of_build(seen, first_build)[-1] == ("build.finished", "success")


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` holds open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def established(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds an open TCP connection to ``port`` on loopback."""
    inodes = socket_inodes(pid)
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if (int(cols[2].split(":")[1], 16) == port and cols[3] == "01"
                and int(cols[9]) in inodes):
            return True
    return False


def test_master_events_follow_resumes_from_its_start_across_a_restart(farm):
    """`master events --follow` without --after: the connection drops before any event came
    (the master restarts), and events happen before it is made again; the command still
    prints every one of them, from the newest at its start on, once each."""
    start = newest(farm)
    proc = subprocess.Popen([str(BIN / "master"), "events", "--follow", "--json", "--config",
                             str(farm.config)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    reader = JsonLines(proc)
    printed = reader.lines
    try:
        wait_for(lambda: established(proc.pid, farm.master.port), 30,
                 "`master events --follow` to connect")
        time.sleep(1)  # its stream is open (its first look for the newest id came before)
        # It waits, without a single event, while the master goes and comes back and a
        # whole build runs; only then may it try to connect again.
        proc.send_signal(signal.SIGSTOP)
        try:
            farm.master.stop()
            farm.master.start()
            build_id = farm.master.submit(["itest-all"])
            assert farm.master.wait_build(build_id)["status"] == "success"
            assert not printed
        finally:
            proc.send_signal(signal.SIGCONT)
        wait_for(lambda: any(e["kind"] == "build.finished" and e["build_id"] == build_id
                             for e in printed), 60, "the build's end from `master events`")
    finally:
        stop_process(proc, signal.SIGTERM)
        reader.close()
    ids = [e["id"] for e in printed]
    assert ids == [e["id"] for e in all_events(farm, start) if e["id"] <= ids[-1]]
    assert [e["kind"] for e in printed if e.get("build_id") == build_id][:2] == \
        ["build.created", "job.queued"]


def test_master_events_prints_the_newest_by_default(farm):
    build_id = farm.master.submit(["itest-all"])
    farm.master.wait_build(build_id)
    kept = all_events(farm)
    assert len(kept) > 8

    def master_events(*args: str) -> str:
        result = subprocess.run([str(BIN / "master"), "events", *args, "--config",
                                 str(farm.config)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    lines = [json.loads(line) for line in master_events("--json", "--limit", "4").splitlines()]
    assert [e["id"] for e in lines] == [e["id"] for e in kept[-4:]]  # the newest, newest last
    after = kept[2]["id"]
    lines = [json.loads(line) for line in
             master_events("--json", "--limit", "3", "--after", str(after)).splitlines()]
    assert [e["id"] for e in lines] == [e["id"] for e in kept[3:6]]
    table = master_events("--limit", "2", "--build", str(build_id)).splitlines()
    assert table[0].split() == ["ID", "TIME", "KIND", "BUILD", "JOB", "DETAILS"]
    assert [line.split()[3] for line in table[1:]] == ["job.finished", "build.finished"]


def test_stop_is_prompt_with_streams_and_followed_logs_open(farm):
    build_id = farm.master.submit(["itest-slow"])
    wait_for(lambda: farm.master.api("GET", f"/api/v1/builds/{build_id}").json()
             ["status"] == "building", 60, "the slow build to start")
    streams = [Stream(farm.master.url) for _ in range(4)]
    follow = requests.get(f"{farm.master.url}/api/v1/builds/{build_id}/packages/itest-slow/log",
                          params={"follow": "1"}, auth=("reader", PASSWORD), stream=True,
                          timeout=30)
    assert follow.status_code == 200
    started = time.monotonic()
    farm.master.stop()
    took = time.monotonic() - started
    for s in streams:
        s.close()
    follow.close()
    farm.master.start()
    farm.master.wait_build(build_id)
    assert took < 8, f"the master took {took:.1f} s to stop with streams open"


def test_paused_queue_holds_its_jobs_until_resumed(farm):
    api = farm.master.api
    assert api("POST", "/api/v1/queues/build.all/pause", user="builder").status_code == 403
    paused = api("POST", "/api/v1/queues/build.all/pause")
    assert paused.status_code == 200 and paused.json()["changed"] is True
    try:
        queues = {q["name"]: q for q in api("GET", "/api/v1/queues", user="reader")
                  .json()["queues"]}
        assert queues["build.all"]["paused"] is True
        assert queues["build.amd64"]["paused"] is False
        assert isinstance(queues["build.amd64"]["length"], int)
        build_id = farm.master.submit(["itest-all"])
        amd64 = farm.master.submit(["itest-amd64"])  # another queue is not held
        assert farm.master.wait_build(amd64, timeout=120)["status"] == "success"
        time.sleep(4)
        assert api("GET", f"/api/v1/builds/{build_id}").json()["status"] == "queued"
    finally:
        resumed = api("POST", "/api/v1/queues/build.all/resume")
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    assert farm.master.wait_build(build_id, timeout=120)["status"] == "success"
    kinds = [e["kind"] for e in all_events(farm, kinds="queue.paused,queue.resumed")]
    assert kinds[-2:] == ["queue.paused", "queue.resumed"]
    assert api("POST", "/api/v1/queues/nonsense/pause").status_code == 404


def test_drained_worker_takes_nothing_new(farm):
    api = farm.master.api
    slow = farm.master.submit(["itest-slow"])

    def busy() -> str | None:
        job = api("GET", f"/api/v1/builds/{slow}").json()["jobs"][0]
        return job["worker"] if job["status"] == "building" else None
    drained = wait_for(busy, 60, "the slow build to start")
    other = "ev-b" if drained == "ev-a" else "ev-a"
    assert api("POST", f"/api/v1/workers/{drained}/drain", user="reader").status_code == 403
    resp = api("POST", f"/api/v1/workers/{drained}/drain")
    assert resp.status_code == 200, resp.text
    try:
        workers = {w["name"]: w for w in api("GET", "/api/v1/workers").json()["workers"]}
        assert workers[drained]["drained"] is True and workers[other]["drained"] is False
        builds = [farm.master.submit([name]) for name in ("itest-all", "itest-amd64")]
        # The drained worker finishes what it builds; the other builds everything new.
        assert farm.master.wait_build(slow)["jobs"][0]["worker"] == drained
        for build_id in builds:
            result = farm.master.wait_build(build_id)
            assert result["status"] == "success"
            assert result["jobs"][0]["worker"] == other, result
    finally:
        assert api("POST", f"/api/v1/workers/{drained}/resume").status_code == 200
    workers = {w["name"]: w for w in api("GET", "/api/v1/workers").json()["workers"]}
    assert workers[drained]["drained"] is False
    assert api("POST", "/api/v1/workers/no-such-worker/drain").status_code == 404


def test_a_queue_only_drained_workers_consume_waits_for_a_resume(farm):
    api = farm.master.api
    for name in ("ev-a", "ev-b"):
        assert api("POST", f"/api/v1/workers/{name}/drain").status_code == 200
    try:
        build_id = farm.master.submit(["itest-all"])
        time.sleep(6)  # three housekeeping rounds
        job = api("GET", f"/api/v1/builds/{build_id}").json()["jobs"][0]
        assert job["status"] == "queued"
        # Held in the store, not bounced between the broker and refused claims.
        assert job["attempt"] <= 2, job
    finally:
        assert api("POST", "/api/v1/workers/ev-a/resume").status_code == 200
    result = farm.master.wait_build(build_id, timeout=120)
    assert result["status"] == "success" and result["jobs"][0]["worker"] == "ev-a"
    assert api("POST", "/api/v1/workers/ev-b/resume").status_code == 200


def test_an_upload_by_hand_is_an_event(farm, tmp_path):
    start = newest(farm)
    deb = make_deb(tmp_path, "ev-by-hand", "1.0-1")
    data = deb.read_bytes()
    resp = farm.master.api("PUT", "/api/v1/upload", data=data,
                           params={"filename": deb.name,
                                   "sha256": hashlib.sha256(data).hexdigest()},
                           headers={"Content-Type": "application/vnd.debian.binary-package"})
    assert resp.status_code == 201, resp.text
    accepted = [e for e in all_events(farm, start) if e["kind"] == "upload.accepted"]
    assert [(e["files"], e["job_id"], e["build_id"]) for e in accepted] == [
        ([deb.name], None, None)]
    assert any(e["kind"] == "index.updated" for e in all_events(farm, accepted[0]["id"]))

"""master.store: the events each change writes (in its transaction), reading and pruning them,
drained workers, paused queues, and the builds' filters."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest

from common.states import JobState, build_state
from master.store import PlannedJob, Store, WorkerInfo


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.in_data_dir(tmp_path)


def kinds(store: Store, after: int = 0) -> list[str]:
    return [e.kind for e in store.events.after(after)]


def two_jobs(store: Store) -> tuple[int, list[int]]:
    """A build of a and b, b waiting for a."""
    return store.jobs.create_build(["a", "b"], None, "alice", [
        PlannedJob("a", "1", "amd64", b"x"), PlannedJob("b", "1", "amd64", b"x", (0,))])


def run(store: Store, job_id: int, state: JobState, worker: str = "w1") -> None:
    job = store.jobs.get(job_id)
    assert job is not None
    store.jobs.mark_enqueued(job_id, job.attempt)
    assert store.jobs.claim(job_id, job.attempt, worker, "u", "h", 60)
    assert store.jobs.finish(job_id, job.attempt, state, None if state == JobState.SUCCESS
                             else "boom", ["a.deb"] if state == JobState.SUCCESS else [])


def test_a_build_s_events_in_order(store):
    build_id, (a, b) = two_jobs(store)
    run(store, a, JobState.SUCCESS)
    run(store, b, JobState.SUCCESS)
    events = store.events.after(0)
    assert [(e.kind, e.job_id) for e in events] == [
        ("build.created", None), ("job.queued", a), ("job.queued", b),
        ("job.started", a), ("upload.accepted", a), ("job.finished", a),
        ("job.started", b), ("upload.accepted", b), ("job.finished", b),
        ("build.finished", None)]
    assert all(e.build_id == build_id for e in events)
    assert events[-1].to_json()["state"] == "success"
    assert events[-1].to_json()["jobs"] == {"success": 2}
    assert events[0].to_json()["packages"] == ["a", "b"]
    assert [e.id for e in events] == sorted(e.id for e in events)


def test_the_newest_events_oldest_first(store):
    build_id, (a, b) = two_jobs(store)
    run(store, a, JobState.SUCCESS)
    run(store, b, JobState.SUCCESS)
    every = store.events.after(0)
    newest = store.events.after(0, limit=3, newest=True)
    assert [e.id for e in newest] == [e.id for e in every[-3:]]
    # Filters first, then the newest of what they leave, still oldest first.
    started = store.events.after(0, kinds=["job.started"], limit=1, newest=True)
    assert [(e.kind, e.job_id) for e in started] == [("job.started", b)]
    assert [e.id for e in store.events.after(every[-2].id, limit=5, newest=True)] == \
        [every[-1].id]
    assert store.events.after(0, build_id=build_id + 1, newest=True) == []


def test_one_build_finished_per_end_and_restart(store):
    build_id, (a, _b) = two_jobs(store)
    run(store, a, JobState.FAILED)  # b is dep-failed in the same transaction
    assert kinds(store)[-3:] == ["job.finished", "job.finished", "build.finished"]
    assert store.events.after(0)[-1].data == {"state": "failed",
                                              "jobs": {"failed": 1, "dep-failed": 1}}
    mark = store.events.newest_id()
    store.jobs.restart(build_id, {})
    assert kinds(store, mark) == ["job.queued", "job.queued"]
    store.jobs.cancel_build(build_id)
    ends = [e for e in store.events.after(0) if e.kind == "build.finished"]
    assert [e.data["state"] for e in ends] == ["failed", "cancelled"]


def test_a_rolled_back_change_writes_no_event(store):
    two_jobs(store)
    before = store.events.newest_id()
    with pytest.raises(RuntimeError), store.db.write() as db:
        from master.store.events import record
        record(db, "queue.paused", queue="build.amd64")
        raise RuntimeError("the change fails")
    assert store.events.newest_id() == before


def test_filters_limits_and_resume(store):
    two_jobs(store)
    second, _ = two_jobs(store)
    assert {e.build_id for e in store.events.after(0, build_id=second)} == {second}
    assert [e.kind for e in store.events.after(0, kinds={"build.created"})] == [
        "build.created", "build.created"]
    assert store.events.after(0, kinds=set()) == []
    assert len(store.events.after(0, limit=2)) == 2
    newest = store.events.newest_id()
    assert store.events.resumable(0) and store.events.resumable(newest)
    assert not store.events.resumable(newest + 1)


def test_prune_keeps_ids_and_makes_old_positions_unresumable(store):
    two_jobs(store)
    newest = store.events.newest_id()
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE events SET at = at - 7200")
    assert store.events.prune(3600) == newest
    assert store.events.oldest_id() is None
    assert store.events.newest_id() == newest  # never given again
    assert store.events.resumable(newest)
    assert not store.events.resumable(newest - 1)
    store.queues.set_paused("build.amd64", True)
    assert store.events.after(newest)[0].id == newest + 1


def test_workers_online_offline_and_drained(store):
    info = WorkerInfo(architectures=("amd64",), concurrency=1)
    store.workers.heartbeat("w1", info)
    store.workers.heartbeat("w1", info)
    assert kinds(store) == ["worker.online"]
    assert store.events.after(0)[0].data == {"worker": "w1", "arches": ["amd64"]}
    assert store.workers.expire(3600) == []
    assert store.workers.expire(-1) == ["w1"]
    store.workers.heartbeat("w1", info)
    store.workers.use_name("w1", info, leaving=True, ttl=30, max_live=None)
    assert [w.name for w in store.workers.live(30)] == []
    assert kinds(store) == ["worker.online", "worker.offline", "worker.online",
                            "worker.offline"]
    assert store.workers.set_drained("w1", True) is True
    assert store.workers.set_drained("w1", True) is False
    assert store.workers.is_drained("w1") and store.workers.drained() == {"w1"}
    assert store.workers.set_drained("w1", False) is True
    assert kinds(store)[-2:] == ["worker.drained", "worker.resumed"]


def test_paused_queues_are_durable(store, tmp_path):
    assert store.queues.set_paused("build.all", True) is True
    assert store.queues.set_paused("build.all", True) is False
    assert Store.in_data_dir(tmp_path).queues.paused() == {"build.all"}
    assert store.queues.set_paused("build.all", False) is True
    assert not store.queues.is_paused("build.all")


def test_the_state_filter_agrees_with_build_state(store):
    """Every build of up to three jobs in any states: find_builds(state=...) finds exactly
    the builds whose build_state is that state."""
    states = list(JobState)
    expected: dict[int, JobState] = {}
    combos = [()] + [c for n in (1, 2, 3)
                     for c in itertools.combinations_with_replacement(states, n)]
    for combo in combos:
        build_id, job_ids = store.jobs.create_build(
            ["p"], None, "bob", [PlannedJob("p", "1", "amd64", b"") for _ in combo])
        with store.db.write() as db:
            for job_id, state in zip(job_ids, combo, strict=True):
                db.execute("UPDATE jobs SET state=? WHERE id=?", (state.value, job_id))
        expected[build_id] = build_state(list(combo))
    for state in states:
        total, found = store.jobs.find_builds(state=state.value, limit=1000)
        assert {b.id for b, _ in found} == {i for i, s in expected.items() if s == state}
        assert total == len(found)


def test_build_filters_and_paging(store):
    one, _ = store.jobs.create_build(["a"], None, "alice", [PlannedJob("a", "1", "amd64", b"")])
    two, _ = store.jobs.create_build(["b"], None, "bob", [PlannedJob("b", "1", "arm64", b"")])
    assert [b.id for b, _ in store.jobs.find_builds(requester="bob")[1]] == [two]
    assert [b.id for b, _ in store.jobs.find_builds(package="a")[1]] == [one]
    assert [b.id for b, _ in store.jobs.find_builds(arch="arm64")[1]] == [two]
    total, page = store.jobs.find_builds(limit=1, offset=1)
    assert total == 2 and [b.id for b, _ in page] == [one]


def test_streams_of_a_process_share_one_read_and_see_what_the_store_has(store):
    """The event stream's per-process cache gives each stream exactly what reading the store
    with its filters would, from any position, also past the cache's size and batches."""
    from master.api.events import BATCH, _Recent

    recent = _Recent()
    reads = 0
    original = store.events.after

    def counted(*args, **kwargs):
        nonlocal reads
        reads += 1
        return original(*args, **kwargs)

    store.events.after = counted  # type: ignore[method-assign]
    def everything(last, kinds_=None, build=None):
        found = []
        while page := original(last, kinds=kinds_, build_id=build):
            found += page
            last = page[-1].id
        return found

    positions = {(None, None): 0, (frozenset({"job.queued"}), None): 0, (None, 3): 0}

    def drain(kinds, build, last, newest):
        seen = []
        while True:
            events, covered = recent.after(store, last, newest, kinds, build)
            seen += events
            if len(events) == BATCH:
                last = events[-1].id
                continue
            last = max(covered, events[-1].id if events else last)
            if covered >= newest:
                return seen, last

    for round_ in range(5):
        for i in range(900 if round_ == 2 else 40):
            store.events.add("job.queued" if i % 3 else "worker.online", build_id=i % 7)
        newest = store.events.newest_id()
        reads_before = reads
        for (kinds_, build), last in positions.items():
            seen, positions[(kinds_, build)] = drain(kinds_, build, last, newest)
            want = everything(last, kinds_, build)
            assert [e.id for e in seen] == [e.id for e in want], (round_, kinds_, build)
        if round_ != 2:
            assert reads - reads_before == 1  # one read for the three streams
    # A stream far behind the cache (a client resuming) reads the store itself.
    seen, _ = drain(None, None, 0, store.events.newest_id())
    assert [e.id for e in seen] == [e.id for e in everything(0)]

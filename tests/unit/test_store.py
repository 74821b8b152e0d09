"""master/store: the job state machine is enforced by the store itself, and the error table."""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import pytest

from common.errors import (
    STATUS_ERRORS,
    ApiError,
    BadRequest,
    Conflict,
    InternalError,
    NotFound,
    TooManyRequests,
    Unavailable,
    Unprocessable,
    error_for_status,
)
from common.states import TRANSITIONS, IllegalTransition, JobState, SourceKind
from master.store import PlannedJob, Store
from master.store.jobs import _job, _move

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state.db")


def job_in(store: Store, state: JobState) -> int:
    _, (job_id,) = store.jobs.create_build(["pkg"], None, "tests",
                                           [PlannedJob("pkg", "1.0-1", "amd64", b"snap")])
    with store.db.write() as db:
        db.execute("UPDATE jobs SET state=? WHERE id=?", (state.value, job_id))
    return job_id


@pytest.mark.parametrize(("old", "new"), [
    (old, new) for old, new in itertools.product(JobState, JobState)])
def test_every_move_is_checked_against_transitions(store: Store, old: JobState,
                                                   new: JobState) -> None:
    job_id = job_in(store, old)
    with store.db.write() as db:
        job = _job(db, job_id)
        assert job is not None
        if new in TRANSITIONS[old]:
            _move(db, job, new)
        else:
            with pytest.raises(IllegalTransition):
                _move(db, job, new)
    after = store.jobs.get(job_id)
    assert after is not None
    assert after.state == (new if new in TRANSITIONS[old] else old)


def test_stale_requests_change_nothing(store: Store) -> None:
    done = job_in(store, JobState.SUCCESS)
    queued = job_in(store, JobState.QUEUED)
    assert not store.jobs.finish(queued, 1, JobState.SUCCESS, None, [])  # never claimed
    assert not store.jobs.claim(done, 1, "w", "u", "h", 60)
    assert store.jobs.claim(queued, 1, "w", "u", "h", 60)
    assert not store.jobs.claim(queued, 1, "w2", "u", "h", 60)  # given out already
    assert not store.jobs.finish(queued, 2, JobState.SUCCESS, None, [])  # another attempt
    build_of_done = store.jobs.get(done)
    assert build_of_done is not None
    assert store.jobs.restart(build_of_done.build_id, {}) == []  # success stays success
    assert store.jobs.cancel_build(build_of_done.build_id) == []
    assert store.jobs.get(done).state == JobState.SUCCESS  # type: ignore[union-attr]


def test_a_failure_takes_its_dependents_down(store: Store) -> None:
    _, (first, second) = store.jobs.create_build(["a1", "b1"], None, "tests", [
        PlannedJob("a1", "1-1", "all", b"s"), PlannedJob("b1", "1-1", "all", b"s", (0,))])
    assert [j.id for j in store.jobs.to_enqueue()] == [first]
    assert store.jobs.claim(first, 1, "w", "u", "h", 60)
    assert store.jobs.finish(first, 1, JobState.FAILED, "broke", [])
    dependent = store.jobs.get(second)
    assert dependent is not None and dependent.state == JobState.DEP_FAILED
    assert "needs a1 (all)" in (dependent.error or "")


def test_an_expired_local_job_fails_instead_of_going_to_the_farm(store: Store) -> None:
    local = store.jobs.create_local_job("pkg", "1.0-1", "amd64", "deb", SourceKind.DEFINITION,
                                        "w", "u", "h", lease_seconds=-1)
    assert local.state == JobState.BUILDING and local.local
    (expired,) = store.jobs.requeue_expired()
    assert expired.id == local.id
    after = store.jobs.get(local.id)
    assert after is not None and after.state == JobState.FAILED
    assert "stopped renewing its lease" in (after.error or "")
    assert store.jobs.to_enqueue() == []


def test_only_the_state_machine_writes_job_states() -> None:
    writers = []
    for path in sorted((ROOT / "master").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"UPDATE jobs SET (?:(?!WHERE).)*\bstate\s*=", line):
                writers.append(f"{path.relative_to(ROOT)}:{number}")
    assert writers == [], writers
    text = (ROOT / "master/store/jobs.py").read_text()
    assert 'columns = {"state": new.value' in text


# -- the error table -----------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "cls", "retry"), [
    (400, BadRequest, False), (404, NotFound, False), (409, Conflict, False),
    (422, Unprocessable, False), (429, TooManyRequests, True), (500, InternalError, True),
    (503, Unavailable, True), (418, BadRequest, False), (502, InternalError, True),
])
def test_statuses_map_to_the_hierarchy(status: int, cls: type[ApiError], retry: bool) -> None:
    assert error_for_status(status) is cls
    assert cls.retryable is retry


def test_every_status_of_the_hierarchy_maps_back() -> None:
    def walk(cls: type[ApiError]) -> list[type[ApiError]]:
        return [cls, *(c for sub in cls.__subclasses__() for c in walk(sub))]

    for cls in walk(ApiError)[1:]:
        assert cls.status in STATUS_ERRORS
        assert issubclass(cls, STATUS_ERRORS[cls.status])


# -- build logs ------------------------------------------------------------------------------


def test_log_pieces_are_streamed_and_bounded(tmp_path: Path) -> None:
    import io

    from master import buildlogs

    store = Store(tmp_path / "state.db")
    job_id = job_in(store, JobState.BUILDING)
    job = store.jobs.get(job_id)
    assert job is not None
    buildlogs.start(tmp_path, job)
    limit = 1000
    assert buildlogs.append(tmp_path, job, 1, io.BytesIO(b"a" * 600), limit) == 600
    size = buildlogs.append(tmp_path, job, 1, io.BytesIO(b"b" * 700), limit)
    text = buildlogs.log_path(tmp_path, job).read_bytes()
    assert text == b"a" * 600 + b"b" * 400 + buildlogs.MARKER
    assert size == len(text)
    # Past the limit, more pieces are read and dropped: one marker, the log unchanged.
    assert buildlogs.append(tmp_path, job, 1, io.BytesIO(b"c" * 5000), limit) == len(text)
    assert buildlogs.log_path(tmp_path, job).read_bytes() == text


class _SlowPiece:
    """A log piece that arrives in small parts, pausing between them, as from a network."""

    def __init__(self, data: bytes, part: int = 37) -> None:
        self.data, self.part, self.at = data, part, 0

    def read(self, size: int = -1) -> bytes:
        import time

        time.sleep(0.001)
        chunk = self.data[self.at:self.at + self.part]
        self.at += len(chunk)
        return chunk


def _pieces_sent_together(tmp_path: Path, pieces: list[bytes], limit: int) -> bytes:
    """The log after every piece was appended at once, each from a thread of its own."""
    import threading

    from master import buildlogs

    store = Store(tmp_path / "state.db")
    job = store.jobs.get(job_in(store, JobState.BUILDING))
    assert job is not None
    buildlogs.start(tmp_path, job)
    start = threading.Barrier(len(pieces))
    sizes: list[int] = []

    def send(piece: bytes) -> None:
        start.wait()
        sizes.append(buildlogs.append(tmp_path, job, 1, _SlowPiece(piece), limit))

    threads = [threading.Thread(target=send, args=(p,)) for p in pieces]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(sizes) == len(pieces)
    text = buildlogs.log_path(tmp_path, job).read_bytes()
    assert max(sizes) == len(text)  # each answer is the size its piece left the log at
    return text


def test_pieces_sent_together_are_kept_whole_and_bounded_exactly(tmp_path: Path) -> None:
    from master import buildlogs

    letters = b"abcdefghijkl"
    pieces = [bytes([c]) * 300 for c in letters]
    text = _pieces_sent_together(tmp_path, pieces, limit=1000)
    # Exactly the limit, then one marker: three whole pieces and the start of a fourth.
    assert len(text) == 1000 + len(buildlogs.MARKER)
    assert text.count(buildlogs.MARKER) == 1 and text.endswith(buildlogs.MARKER)
    kept = text[:1000]
    runs = [(m.group()[0], len(m.group())) for m in re.finditer(rb"(.)\1*", kept)]
    assert [n for _, n in runs] == [300, 300, 300, 100], runs
    assert len({c for c, _ in runs}) == 4  # each piece added once, never interleaved


def test_pieces_that_fit_are_all_kept_whole(tmp_path: Path) -> None:
    from master import buildlogs

    pieces = [bytes([c]) * 100 for c in b"abcdefgh"]
    text = _pieces_sent_together(tmp_path, pieces, limit=1000)
    assert buildlogs.MARKER not in text
    assert sorted(text[i:i + 100] for i in range(0, 800, 100)) == pieces


# -- worker names ------------------------------------------------------------------------------


def _beat(store: Store, name: str, user: str, *, leaving: bool = False,
          max_live: int | None = 64) -> str | None:
    from master.store import WorkerInfo

    return store.workers.use_name(name, WorkerInfo(("amd64",), 1, user=user), leaving=leaving,
                                  ttl=30, max_live=max_live)


def _live_names(store: Store) -> set[str]:
    return {w.name for w in store.workers.live(30)}


def test_a_worker_name_belongs_to_the_user_that_recorded_it(store: Store) -> None:
    assert _beat(store, "box", "alice") is None
    for leaving in (False, True):
        refused = _beat(store, "box", "mallory", leaving=leaving)
        assert refused is not None and "belongs to another user" in refused
    assert _live_names(store) == {"box"}
    assert store.workers.get("box").info.user == "alice"  # type: ignore[union-attr]
    # Still hers once it left: leaving does not free a name.
    assert _beat(store, "box", "alice", leaving=True) is None
    assert _live_names(store) == set()
    assert _beat(store, "box", "mallory") is not None
    assert _beat(store, "box", "alice") is None
    # An admin (no limit given) may use any name.
    assert _beat(store, "box", "root", leaving=True, max_live=None) is None
    assert _live_names(store) == set()


def test_a_user_has_at_most_so_many_live_names(store: Store) -> None:
    for i in range(3):
        assert _beat(store, f"n{i}", "alice", max_live=3) is None
    refused = _beat(store, "n3", "alice", max_live=3)
    assert refused is not None and "3 live worker names" in refused
    assert store.workers.get("n3") is None
    assert _beat(store, "n0", "alice", max_live=3) is None  # a live name of hers goes on
    assert _beat(store, "other", "bob", max_live=3) is None  # the limit is per user
    assert _beat(store, "n1", "alice", leaving=True, max_live=3) is None
    assert _beat(store, "n3", "alice", max_live=3) is None
    # A leaving name that was never recorded records nothing.
    assert _beat(store, "ghost", "alice", leaving=True, max_live=3) is None
    assert store.workers.get("ghost") is None


def test_a_user_holds_so_many_names_in_all_until_they_are_forgotten(store: Store) -> None:
    """Leaving and naming new workers does not add names without end: a user holds at most
    HELD_PER_LIVE times its live names, and a name is free again once forgotten."""
    import time

    from master.store.workers import HELD_PER_LIVE, NAME_KEEP

    held = 2 * HELD_PER_LIVE
    for i in range(held):
        assert _beat(store, f"n{i}", "alice", max_live=2) is None
        assert _beat(store, f"n{i}", "alice", leaving=True, max_live=2) is None
    refused = _beat(store, "one-more", "alice", max_live=2)
    assert refused is not None and f"holds {held} worker names" in refused
    assert store.workers.get("one-more") is None
    assert _beat(store, "n0", "alice", max_live=2) is None  # a name she holds comes back
    assert _beat(store, "box", "bob", max_live=2) is None  # per user
    assert store.workers.forget_silent() == 0  # all heard from within NAME_KEEP
    with store.db.write() as db:
        db.execute("UPDATE workers SET last_seen=? WHERE name!='n0' AND name!='box'",
                   (time.time() - NAME_KEEP - 1,))
    assert store.workers.forget_silent() == held - 1
    assert store.workers.get("n1") is None
    assert _beat(store, "one-more", "alice", max_live=2) is None
    assert _beat(store, "n1", "mallory", max_live=2) is None  # forgotten: free again


def test_a_name_recorded_without_a_user_goes_to_who_built_under_it(store: Store) -> None:
    import time

    from master.store import WorkerInfo

    job_id = job_in(store, JobState.QUEUED)
    assert store.jobs.claim(job_id, 1, "old-box", "alice", "hash", 60)
    with store.db.write() as db:
        for name in ("old-box", "old-idle"):
            db.execute("INSERT INTO workers(name, info, last_seen) VALUES (?,?,?)",
                       (name, WorkerInfo(("amd64",), 1).to_json(), time.time()))
    assert _beat(store, "old-box", "mallory") is not None
    assert _beat(store, "old-box", "alice") is None
    assert store.workers.get("old-box").info.user == "alice"  # type: ignore[union-attr]
    # Never built anything: nobody's while live, free once its heartbeats stopped.
    refused = _beat(store, "old-idle", "mallory")
    assert refused is not None and "without a user" in refused
    with store.db.write() as db:
        db.execute("UPDATE workers SET last_seen=? WHERE name='old-idle'", (time.time() - 31,))
    assert _beat(store, "old-idle", "bob") is None
    assert _beat(store, "old-idle", "mallory") is not None


def test_connections_are_kept_for_the_next_transaction(tmp_path: Path) -> None:
    db = Store(tmp_path / "state.db").db
    with db.write() as first:
        first.execute("CREATE TABLE t (x INTEGER)")
    with db.read() as second:
        assert second is first  # the same connection, its schema already read
    with pytest.raises(RuntimeError), db.write() as failing:
        failing.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("the caller gave up")
    with db.read() as third:
        assert third is not failing  # a failed transaction's connection is never reused
        assert third.execute("SELECT count(*) FROM t").fetchone()[0] == 0  # rolled back


def test_a_forked_process_never_uses_its_parents_connections(tmp_path: Path) -> None:
    db = Store(tmp_path / "state.db").db
    with db.write() as parents:
        parents.execute("CREATE TABLE t (x INTEGER)")
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a transaction of its own, on a connection of its own
        try:
            with db.write() as childs:
                childs.execute("INSERT INTO t VALUES (7)")
            os.write(writer, b"new" if childs is not parents else b"parent's")
        finally:
            os._exit(0)
    os.close(writer)
    answer = os.read(reader, 100)
    os.waitpid(pid, 0)
    os.close(reader)
    assert answer == b"new"
    with db.read() as again:
        assert again is parents  # the parent's pool is untouched
        assert again.execute("SELECT x FROM t").fetchall()[0][0] == 7

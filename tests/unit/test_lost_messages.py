"""master/scheduler.py's search for lost messages: a job whose message left the broker without
a claim is sent again within `lost_message_bound`, and a message still in the broker never is.

The broker's view is the one thing replaced (`_message_ids`, what a Redis broker holds); the
store is real, and the housekeeping ticks are played on a clock of the test's own.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, cast

import pytest

from common.config import settings_from_dict
from common.errors import Conflict
from common.messages import PROTOCOL_VERSION
from common.states import JobState
from master.scheduler import LOST_GRACE, Scheduler, lost_message_bound, task_id
from master.store import PlannedJob, Store, WorkerInfo


def first_resend(tmp_path: Path, store: Store, tick: float, phase: float, sent: float,
                 left: float, until: float = 1000.0) -> float | None:
    """When a new job is sent again, with ticks every ``tick`` seconds from ``phase``, its
    message sent at ``sent`` and gone from the broker at ``left``; None if not by ``until``.
    (Each call's scheduler is new; the jobs of earlier calls were sent again already.)"""
    settings = settings_from_dict({"master": {"data_dir": str(tmp_path)}})
    scheduler = Scheduler(settings, store, cast(Any, None), cast(Any, None))
    _, (job_id,) = store.jobs.create_build(["pkg"], None, "tests",
                                           [PlannedJob("pkg", "1.0-1", "all", b"snap")])
    with store.db.write() as db:
        db.execute("UPDATE jobs SET enqueued=1, enqueued_at=? WHERE id=?", (sent, job_id))
    clock = {"now": 0.0}

    def message_ids() -> set[str]:
        return set() if clock["now"] >= left else {task_id(job_id, 1)}

    scheduler._message_ids = message_ids  # type: ignore[method-assign]
    now = phase
    while now <= until:
        clock["now"] = now
        scheduler.find_lost_messages(now=now)
        job = store.jobs.get(job_id)
        assert job is not None and job.state == JobState.QUEUED
        if job.attempt == 2:
            return now
        now += tick
    return None


@pytest.mark.parametrize("tick", [2.0, 2.5, 3.0])
def test_a_lost_message_is_sent_again_within_the_bound(tmp_path: Path, tick: float) -> None:
    bound = lost_message_bound(tick)
    store = Store(tmp_path / "state.db")
    delays = []
    for phase, sent, after in itertools.product(
            [tick * i / 4 for i in range(4)], [100.0, 101.3], [0.0, 9.5, 17.0]):
        resent = first_resend(tmp_path, store, tick, phase, sent, sent + after)
        assert resent is not None
        delay = resent - (sent + after)
        assert resent - sent >= LOST_GRACE  # never while the message may still be in flight
        assert 0 < delay <= bound, (phase, sent, after, delay)
        delays.append(delay)
    # The bound is what the code gives, not a loose guess: the worst case comes close to it.
    assert max(delays) > bound - 2 * tick - 1


def test_a_message_in_the_broker_is_never_sent_again(tmp_path: Path) -> None:
    assert first_resend(tmp_path, Store(tmp_path / "state.db"), 2.0, 0.0, 100.0,
                        left=float("inf"), until=600.0) is None


def test_a_message_refused_before_its_sender_marked_it_is_sent_again(tmp_path: Path) -> None:
    """A drained worker may take a message, and be refused it at its claim, before the sender
    has marked the job sent; the job must go out again at once, not wait for the search for
    lost messages (it once did, for about half a minute)."""
    settings = settings_from_dict({"master": {"data_dir": str(tmp_path)}})
    store = Store(tmp_path / "state.db")
    for name in ("w-a", "w-b"):
        store.workers.heartbeat(name, WorkerInfo(("amd64",), 1, ("build.amd64", "build.all")))
    store.workers.set_drained("w-b", True)
    sent: list[tuple[int, int]] = []
    refused: list[str] = []

    class Broker:
        """Hands each message to a worker before send_task returns: the drained one first."""

        def send_task(self, name: str, kwargs: dict[str, Any], **options: Any) -> None:
            job_id, attempt = kwargs["job_id"], kwargs["attempt"]
            sent.append((job_id, attempt))
            if len(sent) == 1:
                with pytest.raises(Conflict) as refusal:
                    scheduler.claim(job_id, attempt, "w-b", "worker", PROTOCOL_VERSION,
                                    "http://master")
                refused.append(refusal.value.message)

    scheduler = Scheduler(settings, store, cast(Any, Broker()), cast(Any, None))
    _, (job_id,) = store.jobs.create_build(["pkg"], None, "tests",
                                           [PlannedJob("pkg", "1.0-1", "all", b"snap")])
    # The sender goes round again for what became sendable while it sent: attempt 2 leaves
    # at once, and the undrained worker may take it.
    assert scheduler.enqueue_pending() == 2
    assert refused and "w-b is drained" in refused[0]
    assert sent == [(job_id, 1), (job_id, 2)]
    job = store.jobs.get(job_id)
    assert job is not None and (job.attempt, job.enqueued) == (2, True)
    assert scheduler.claim(job_id, 2, "w-a", "worker", PROTOCOL_VERSION,
                           "http://master").attempt == 2

"""worker/tasks.py's lease keeper: passing errors never stop it; "not yours" does."""

from __future__ import annotations

import time
from typing import Any

from common.errors import InternalError, TooManyRequests, Unavailable
from common.messages import JobAssignment
from worker.tasks import LeaseKeeper


class FlakyMaster:
    """Stands in for MasterClient.renew_lease: the answers, one per call, then True."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = list(answers)
        self.calls = 0

    def renew_lease(self, assignment: JobAssignment, retry_for: float) -> bool:
        self.calls += 1
        answer = self.answers.pop(0) if self.answers else True
        if isinstance(answer, BaseException):
            raise answer
        return bool(answer)


def assignment() -> JobAssignment:
    return JobAssignment(job_id=1, attempt=1, build_id=1, package="p", version="1", arch="all",
                         token="t", snapshot_b64="", lease_seconds=2.0)


def run_keeper(master: FlakyMaster, seconds: float) -> LeaseKeeper:
    keeper = LeaseKeeper(master, assignment())  # type: ignore[arg-type]
    keeper.start()
    time.sleep(seconds)
    keeper.stop()
    keeper.join(timeout=5)
    return keeper


def test_passing_errors_do_not_stop_the_renewals() -> None:
    master = FlakyMaster([TooManyRequests("busy"), Unavailable("restarting"),
                          InternalError("oops"), RuntimeError("a bug")])
    keeper = run_keeper(master, 4.0)
    assert master.calls >= 6  # it went on renewing after every one of them
    assert not keeper.lost.is_set()


def test_an_attempt_taken_away_stops_the_build() -> None:
    master = FlakyMaster([Unavailable("restarting"), False])
    keeper = run_keeper(master, 2.5)
    assert keeper.lost.is_set()
    assert master.calls == 2

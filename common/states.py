"""The states of one job (a package × architecture of a build) and the moves between them."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    BUILDING = "building"
    SUCCESS = "success"
    FAILED = "failed"
    DEP_FAILED = "dep-failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.SUCCESS, JobState.FAILED, JobState.DEP_FAILED,
                          JobState.CANCELLED})

#: Every allowed move, written down once. A restart sends a failed job back to the queue.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.BUILDING, JobState.CANCELLED, JobState.DEP_FAILED}),
    JobState.BUILDING: frozenset({JobState.SUCCESS, JobState.FAILED, JobState.QUEUED,
                                  JobState.CANCELLED}),
    JobState.SUCCESS: frozenset(),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.DEP_FAILED: frozenset({JobState.QUEUED}),
    JobState.CANCELLED: frozenset({JobState.QUEUED}),
}


def can_move(old: JobState, new: JobState) -> bool:
    return new in TRANSITIONS[old]


def build_state(states: list[JobState]) -> JobState:
    """The state of a whole build, summarised from its jobs."""
    if not states:
        return JobState.QUEUED
    if all(s == JobState.SUCCESS for s in states):
        return JobState.SUCCESS
    if any(s == JobState.BUILDING for s in states):
        return JobState.BUILDING
    if any(not s.is_final for s in states):
        return JobState.BUILDING if any(s.is_final for s in states) else JobState.QUEUED
    for s in (JobState.FAILED, JobState.DEP_FAILED, JobState.CANCELLED):
        if s in states:
            return s
    return JobState.SUCCESS

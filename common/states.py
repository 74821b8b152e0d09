"""The closed sets of a build's life: job states and the moves between them, report outcomes,
and the kinds of source a job builds from.

`TRANSITIONS` is the one source of truth for job states: the store makes every state change
through `check_move`, so a move not written here cannot happen.
"""

from __future__ import annotations

from enum import StrEnum

from common.errors import Conflict


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

#: Every allowed move, written down once. A restart sends a failed job back to the queue; a
#: lost lease sends a building one back.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.BUILDING, JobState.CANCELLED, JobState.DEP_FAILED}),
    JobState.BUILDING: frozenset({JobState.SUCCESS, JobState.FAILED, JobState.QUEUED,
                                  JobState.CANCELLED}),
    JobState.SUCCESS: frozenset(),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.DEP_FAILED: frozenset({JobState.QUEUED}),
    JobState.CANCELLED: frozenset({JobState.QUEUED}),
}

#: The states a restart sends back to the queue.
RESTARTABLE = frozenset({JobState.FAILED, JobState.DEP_FAILED, JobState.CANCELLED})


class IllegalTransition(Conflict):
    """A job state change that TRANSITIONS does not allow."""


def can_move(old: JobState, new: JobState) -> bool:
    return new in TRANSITIONS[old]


def check_move(old: JobState, new: JobState, job_id: int | None = None) -> None:
    if not can_move(old, new):
        what = f"job {job_id}" if job_id is not None else "a job"
        raise IllegalTransition(f"{what} cannot go from {old.value} to {new.value}",
                                state=old.value)


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


class ReportStatus(StrEnum):
    """A worker's final word on an attempt."""

    SUCCESS = "success"
    FAILED = "failed"


class SourceKind(StrEnum):
    """What a job's snapshot holds: a YAML definition, or a Debian source package (the deb
    format's own kind of source)."""

    DEFINITION = "definition"
    DEBIAN_SOURCE = "debian-source"

"""common/messages.py (wire messages) and common/states.py (job states)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from common.errors import BadRequest, ProtocolMismatch
from common.messages import (
    PROTOCOL_VERSION,
    BuildTask,
    ClaimRequest,
    Heartbeat,
    JobAssignment,
    JobReport,
    UploadReceipt,
)
from common.states import FINAL_STATES, TRANSITIONS, JobState, build_state, can_move

ASSIGNMENT = {
    "job_id": 3, "attempt": 1, "build_id": 2, "package": "hello", "version": "1.0-1",
    "arch": "amd64", "token": "t0k3n", "snapshot_b64": "AAAA",
}

# -- messages --------------------------------------------------------------------------------


def test_workers_of_other_protocol_versions_are_refused() -> None:
    """Version 3 renamed the assignment's ``apt_sources`` to ``build_sources``: a worker of
    version 2 (which would find no sources) is refused at its claim, as one of version 1 is."""
    from master.scheduler import check_protocol

    check_protocol(PROTOCOL_VERSION)
    for older in (1, 2):
        with pytest.raises(ProtocolMismatch, match=f"version {older} .* older") as refused:
            check_protocol(older)
        assert refused.value.status == 400
        assert refused.value.details["protocol"] == PROTOCOL_VERSION
    with pytest.raises(ProtocolMismatch, match="newer"):
        check_protocol(PROTOCOL_VERSION + 1)
    sent = JobAssignment.from_json({**ASSIGNMENT, "build_sources": ["deb http://m/repo s c"]})
    assert sent.build_sources == ("deb http://m/repo s c",)
    assert "apt_sources" not in sent.to_json()


def test_a_local_job_names_a_source_kind_its_format_has(tmp_path: Any) -> None:
    from common.config import settings_from_dict
    from master.scheduler import Scheduler
    from master.store import Store

    settings = settings_from_dict({"master": {"data_dir": str(tmp_path)}})
    scheduler = Scheduler(settings, Store(tmp_path / "state.db"), None,  # type: ignore[arg-type]
                          None)  # type: ignore[arg-type]
    for fmt, kind in (("rpm", "debian-source"), ("pacman", "debian-source"),
                      ("deb", "no-such-kind")):
        with pytest.raises(BadRequest) as refused:
            scheduler.create_local_job("hello", "1.0-1", "all", fmt, kind, "box", "u",
                                       PROTOCOL_VERSION, "http://m")
        assert refused.value.details["field"] == "source_kind", refused.value.message
    assert Store(tmp_path / "state.db").jobs.list_builds(limit=10) == []


def test_from_json_reads_every_field() -> None:
    a = JobAssignment.from_json(ASSIGNMENT)
    assert a == JobAssignment(3, 1, 2, "hello", "1.0-1", "amd64", "t0k3n", "AAAA")


def test_from_json_ignores_unknown_keys() -> None:
    a = JobAssignment.from_json({**ASSIGNMENT, "added_in_a_later_version": [1, 2]})
    assert a.job_id == 3
    assert not hasattr(a, "added_in_a_later_version")
    assert BuildTask.from_json({"job_id": 1, "attempt": 2, "priority": 9}) == BuildTask(1, 2)


@pytest.mark.parametrize("missing", sorted(ASSIGNMENT))
def test_from_json_rejects_a_missing_required_key(missing: str) -> None:
    data = {k: v for k, v in ASSIGNMENT.items() if k != missing}
    with pytest.raises(ValueError, match=rf"\b{missing} is required"):
        JobAssignment.from_json(data)


@pytest.mark.parametrize(
    ("cls", "data", "field", "fragment"),
    [
        (BuildTask, {"job_id": "1", "attempt": 1}, "BuildTask.job_id", "integer"),
        (BuildTask, {"job_id": 1.5, "attempt": 1}, "BuildTask.job_id", "integer"),
        (BuildTask, {"job_id": True, "attempt": 1}, "BuildTask.job_id", "integer"),
        (BuildTask, {"job_id": 1, "attempt": None}, "BuildTask.attempt", "integer"),
        (ClaimRequest, {"attempt": 1, "worker": 5}, "ClaimRequest.worker", "string"),
        (JobReport, {"attempt": 1, "token": "t", "status": "failed", "error": 3},
         "JobReport.error", "string"),
        (JobReport, {"attempt": 1, "token": "t", "status": "success", "files": "a.deb"},
         "JobReport.files", "list"),
        (JobReport, {"attempt": 1, "token": "t", "status": "success", "files": [1]},
         "JobReport.files", "string"),
        (Heartbeat, {"name": "w", "architectures": ["amd64"], "concurrency": 1,
                     "leaving": "yes"}, "Heartbeat.leaving", "true or false"),
        (Heartbeat, {"name": "w", "architectures": ["amd64"], "concurrency": 1,
                     "building": ["7"]}, "Heartbeat.building", "integer"),
        (UploadReceipt, {"filename": "a", "pool_path": "p", "sha256": "s", "size": "9"},
         "UploadReceipt.size", "integer"),
    ],
)
def test_from_json_rejects_a_wrong_type(cls: Any, data: dict[str, Any], field: str,
                                        fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        cls.from_json(data)
    assert field in str(info.value)
    assert fragment in str(info.value)


@pytest.mark.parametrize("data", [None, [], "x", 3])
def test_from_json_needs_an_object(data: Any) -> None:
    with pytest.raises(ValueError, match="expected a JSON object"):
        BuildTask.from_json(data)


def test_defaults_and_optional_values() -> None:
    report = JobReport.from_json({"attempt": 2, "token": "t", "status": "failed", "error": None})
    assert report == JobReport(attempt=2, token="t", status="failed", error=None, files=())
    beat = Heartbeat.from_json({"name": "w", "architectures": ["amd64", "arm64"],
                                "concurrency": 2, "building": [4, 5]})
    assert beat.architectures == ("amd64", "arm64")
    assert beat.building == (4, 5)
    assert beat.queues == ()
    assert beat.leaving is False


def test_json_round_trip() -> None:
    messages = [
        BuildTask(1, 2),
        ClaimRequest(attempt=1, worker="w1"),
        JobAssignment.from_json(ASSIGNMENT),
        JobReport(attempt=1, token="t", status="success", files=("a.deb", "b.deb")),
        Heartbeat(name="w", architectures=("amd64",), concurrency=1,
                  queues=("build.amd64", "build.all"), building=(3,), leaving=True),
        UploadReceipt(filename="a.deb", pool_path="pool/main/a/a/a.deb", sha256="0" * 64,
                      size=10, already_present=True),
    ]
    for message in messages:
        wire = json.loads(json.dumps(message.to_json()))
        assert type(message).from_json(wire) == message


# -- states ----------------------------------------------------------------------------------


def test_final_states() -> None:
    assert {s for s in JobState if s.is_final} == {
        JobState.SUCCESS, JobState.FAILED, JobState.DEP_FAILED, JobState.CANCELLED}
    assert {s for s in JobState if s.is_final} == FINAL_STATES
    assert not JobState.QUEUED.is_final and not JobState.BUILDING.is_final


def test_state_values_are_the_wire_names() -> None:
    assert [s.value for s in JobState] == [
        "queued", "building", "success", "failed", "dep-failed", "cancelled"]
    assert JobState("dep-failed") is JobState.DEP_FAILED


ALLOWED = {
    ("queued", "building"), ("queued", "cancelled"), ("queued", "dep-failed"),
    ("building", "success"), ("building", "failed"), ("building", "queued"),
    ("building", "cancelled"),
    ("failed", "queued"), ("dep-failed", "queued"), ("cancelled", "queued"),
}


@pytest.mark.parametrize(("old", "new"), list(itertools.product(JobState, JobState)),
                         ids=lambda s: s.value)
def test_transitions(old: JobState, new: JobState) -> None:
    assert can_move(old, new) is ((old.value, new.value) in ALLOWED)


def test_every_state_has_transitions_and_success_is_terminal() -> None:
    assert set(TRANSITIONS) == set(JobState)
    assert TRANSITIONS[JobState.SUCCESS] == frozenset()
    assert not any(can_move(s, s) for s in JobState)


Q, B, S, F, D, C = (JobState.QUEUED, JobState.BUILDING, JobState.SUCCESS, JobState.FAILED,
                    JobState.DEP_FAILED, JobState.CANCELLED)


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([], Q),
        ([Q], Q),
        ([Q, Q], Q),
        ([S], S),
        ([S, S, S], S),
        ([B], B),
        ([Q, B], B),
        ([S, B], B),
        ([F, B], B),
        ([S, Q], B),  # some done, some waiting: the build is under way
        ([F, Q], B),
        ([F], F),
        ([S, F], F),
        ([S, D], D),
        ([S, C], C),
        ([F, D, C], F),
        ([D, C], D),
        ([C, C], C),
    ],
)
def test_build_state(states: list[JobState], expected: JobState) -> None:
    assert build_state(states) is expected
    assert build_state(list(reversed(states))) is expected

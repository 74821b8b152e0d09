"""The event stream: Server-Sent Events, and the same events as JSON pages for scripts.

``GET /api/v1/events`` sends every event committed after the client's position, then each new
one as it is committed, read from the store (so the clients of every master process see every
event, in commit order). The position is the ``Last-Event-ID`` header a reconnecting
``EventSource`` sends, else the ``after`` parameter, else the newest event (live only). A
position the client cannot resume from (its events were pruned, or it is beyond the newest)
gets one ``reset`` event, whose data and id are the newest id, then the live events.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, request

from common.errors import BadRequest
from master import streams
from master.api.helpers import flag_arg, int_arg, svc
from master.auth import require
from master.store import Event, Store
from master.store.events import KINDS, MAX_LIMIT

bp = Blueprint("events", __name__, url_prefix="/api/v1")

#: How often a stream looks for new events, and the longest it stays silent (a comment keeps
#: proxies and clients from taking the connection for dead).
POLL = 0.5
KEEPALIVE = 15.0
#: Events read from the store at a time.
BATCH = 500
#: Largest id accepted (SQLite's integers).
MAX_ID = 2**63 - 1


def _position(raw: str, name: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise BadRequest(f"{name} must be an event id (a non-negative integer)",
                         field=name) from None
    if not 0 <= value <= MAX_ID:
        raise BadRequest(f"{name} must be an event id (a non-negative integer)", field=name)
    return value


def _kinds() -> frozenset[str] | None:
    raw = request.args.get("kinds")
    if raw is None or not raw.strip():
        return None
    kinds = frozenset(k.strip() for k in raw.split(",") if k.strip())
    unknown = sorted(kinds - set(KINDS))
    if unknown:
        raise BadRequest(f"unknown event kind {unknown[0]!r} (known: {', '.join(KINDS)})",
                         field="kinds")
    return kinds


def _build() -> int | None:
    if request.args.get("build") is None:
        return None
    return int_arg("build", lo=1, hi=MAX_ID)


class _Newest:
    """The newest event id as this process last read it: one read per `REFRESH` seconds,
    shared by every stream of the process, so idle streams cost the store nothing each.

    It may lag the store by up to REFRESH, never lead it: a stream reads events only up to
    it, and gets the rest at its next look.
    """

    REFRESH = POLL / 2

    def __init__(self) -> None:
        self.value = 0
        self.read_at = float("-inf")
        self.store: Store | None = None

    def get(self, store: Store) -> int:
        now = time.monotonic()
        if store is not self.store or now - self.read_at >= self.REFRESH:
            self.value, self.read_at, self.store = store.events.newest_id(), now, store
        return self.value


_newest = _Newest()


class _Recent:
    """The newest events as this process last read them, shared by every stream of the
    process: while events flow, each of them is read from the store once per process, not once
    per stream (200 streams each reading every new event cost builds two thirds of their
    throughput), and each stream picks out what its filters want.

    Holds every event with an id in (``start``, ``end``], at most `KEEP` of them. A stream
    that is further behind (a client resuming from an older position) reads the store itself.
    """

    KEEP = 4 * BATCH

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.start = self.end = 0
        self.store: Store | None = None
        self.messages: dict[int, str] = {}

    def message(self, event: Event) -> str:
        """The event as an SSE message, encoded once per process (not once per stream)."""
        text = self.messages.get(event.id)
        if text is None:
            text = message(event)
            if self.start < event.id <= self.end:
                self.messages[event.id] = text
        return text

    def after(self, store: Store, last: int, newest: int, kinds: frozenset[str] | None,
              build_id: int | None) -> tuple[list[Event], int]:
        """The events after ``last`` up to ``newest`` that match, at most `BATCH`, and how far
        they are complete: every matching event up to that id is among them (or there are
        `BATCH` of them, and the caller reads on from the last)."""
        if store is not self.store or last < self.start:
            if store is not self.store:  # a new store (tests make several): start afresh
                self.events, self.start, self.end, self.store = [], last, last, store
                self.messages.clear()
            else:
                return self._direct(store, last, newest, kinds, build_id)
        if newest > self.end:
            fetched = store.events.after(self.end, limit=BATCH)
            fetched = [e for e in fetched if e.id <= newest]
            self.events.extend(fetched)
            # Fewer than a batch: every event up to `newest` is here (ids are given in commit
            # order, and `newest` was committed before it was read).
            self.end = fetched[-1].id if len(fetched) == BATCH else newest
            if len(self.events) > self.KEEP:
                dropped = self.events[:-self.KEEP]
                self.events = self.events[-self.KEEP:]
                self.start = dropped[-1].id
                for event in dropped:
                    self.messages.pop(event.id, None)
            if last < self.start:
                return self._direct(store, last, newest, kinds, build_id)
        matching = [e for e in self.events if e.id > last and e.id <= newest
                    and (kinds is None or e.kind in kinds)
                    and (build_id is None or e.build_id == build_id)]
        return matching[:BATCH], min(newest, self.end)

    @staticmethod
    def _direct(store: Store, last: int, newest: int, kinds: frozenset[str] | None,
                build_id: int | None) -> tuple[list[Event], int]:
        events = store.events.after(last, kinds=kinds, build_id=build_id, limit=BATCH)
        return [e for e in events if e.id <= newest], newest


_recent = _Recent()


def message(event: Event) -> str:
    """One event as an SSE message."""
    data = json.dumps(event.to_json(), separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n"


def stream(store: Store, position: int | None, kinds: frozenset[str] | None,
           build_id: int | None, timeout: float | None = None, poll: float = POLL,
           keepalive: float = KEEPALIVE) -> Iterator[str]:
    """The SSE body: a reset if the position cannot be resumed, then every event after it,
    for ``timeout`` seconds (None: until the client or the master goes)."""
    end = None if timeout is None else time.monotonic() + timeout
    yield "retry: 2000\n: connected\n\n"  # headers out at once; reconnect after 2 s
    if position is None:
        last = store.events.newest_id()
    elif store.events.resumable(position):
        last = position
    else:
        last = store.events.newest_id()
        yield f"id: {last}\nevent: reset\ndata: {last}\n\n"
    quiet_since = time.monotonic()
    first = True
    while streams.alive():
        # The first look reads the store itself: what is there at the start is all sent.
        newest = store.events.newest_id() if first else _newest.get(store)
        first = False
        events: list[Event] = []
        covered = newest
        if newest > last:
            events, covered = _recent.after(store, last, newest, kinds, build_id)
        for event in events:
            yield _recent.message(event)
        if events:
            quiet_since = time.monotonic()
        if len(events) == BATCH:
            last = events[-1].id
            continue  # more waiting: no pause
        # Nothing else up to `covered` matches: skip past what the filters left out.
        last = max(covered, events[-1].id if events else last)
        if covered < newest:
            continue  # the shared read stopped at a full batch: read on, no pause
        if end is not None and time.monotonic() >= end:
            break
        if time.monotonic() - quiet_since >= keepalive:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        if not streams.wait(poll if end is None else min(poll, max(0.0, end - time.monotonic()))):
            break


@bp.get("/events")
@require("read")
def events_stream() -> Any:
    header = request.headers.get("Last-Event-ID")
    position = None
    if header is not None and header.strip():
        position = _position(header, "Last-Event-ID")
    elif request.args.get("after") is not None:
        position = _position(request.args["after"], "after")
    kinds, build_id = _kinds(), _build()
    timeout = None
    if request.args.get("timeout") is not None:
        timeout = float(int_arg("timeout", lo=0, hi=86400))
    response = Response(stream(svc().store, position, kinds, build_id, timeout),
                        mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # a proxy in front must not hold it back
    return response


@bp.get("/events/list")
@require("read")
def events_list() -> Any:
    """A page of events, oldest first: the oldest ``limit`` after ``after``, or with
    ``newest`` the newest ``limit`` of them (what happened last)."""
    after = _position(request.args.get("after", "0"), "after")
    limit = int_arg("limit", 100, 1, MAX_LIMIT)
    latest = flag_arg("newest")
    kinds, build_id = _kinds(), _build()
    store = svc().store
    newest = store.events.newest_id()
    events = store.events.after(after, kinds=kinds, build_id=build_id, limit=limit,
                                newest=latest)
    if latest:
        # The newest ones: nothing newer is left out (one committed since `newest` was read
        # may be among them).
        next_after = max(after, newest, events[-1].id if events else 0)
    else:
        events = [e for e in events if e.id <= newest]
        next_after = events[-1].id if len(events) == limit else max(after, newest)
    return {
        "events": [e.to_json() for e in events],
        "newest_id": newest,
        "oldest_id": store.events.oldest_id(),
        # where the next page starts; a gap after `after` means events were pruned
        "next_after": next_after,
        "complete": store.events.resumable(after),
    }

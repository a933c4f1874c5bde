"""The recording sink: session events queued by the relays and written in batches.

The writer has a thread of its own (not the loop's shared executor): no amount of work the
clients cause there (logins, cancel requests, a flood of them against a slow store) can hold
recordings back, and with them every session (backpressure).

A relay never waits for the database, and pays as little as it can per statement:
:meth:`RecordingSink.add_statements` appends one small tuple (session, time, the raw text
bytes of the statements that arrived together, or their JSON where the relay rendered it in
native code) to an in-memory queue and returns (the native relay's hand-over is one
:meth:`RecordingSink.add_forwarded` call for every session it serves); decoding, JSON,
encryption and the INSERT all happen in the writer, a batch at a time. A background
task writes the queue every ``interval`` seconds, or as soon as ``batch`` events wait, one
transaction per batch (at most ``batch`` events and about ``batch_bytes`` of texts) holding one
row per session: a *chunk* of that session's events, one JSON array sealed once (see
:func:`jitvault.services.sessions.record_chunks`). A session's events
are written before its end is (:meth:`flush` runs before the session is closed), and on shutdown.

Backpressure before refusal: once a quarter of the queue's bound waits (events or bytes),
:meth:`backlog` hands the relays an awaitable that is done when the writer has caught up (below
half of that), and the relays read nothing more from their clients until then: a client that
sends statements faster than they can be stored is slowed to the store's pace, not cut.

Fail closed: the queue is bounded (events and bytes). When it is full anyway, or when the store
refuses a batch (database or audit down), :meth:`add` raises :class:`RecordingUnavailable` and
the front end ends the session that wanted to record; the sessions whose events are still
waiting are cut through ``on_failure``. Refused batches stay queued and are retried, so nothing
is dropped while the process lives; a crash loses at most what was queued and not yet written
(about ``interval`` seconds of statements).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from functools import partial
from json.encoder import encode_basestring_ascii
from typing import Any

from jitvault.errors import Unavailable
from jitvault.osthread import named_thread_pool
from jitvault.plugin_api import Cut, RenderedStatements
from jitvault.services import Node, sessions

log = logging.getLogger(__name__)

#: what the client of a cut session is told
RECORDING_LOST = "the session recording cannot be stored"


class RecordingUnavailable(Unavailable):
    """Events cannot be queued or stored now: the session that wanted to record must end."""

    code = "recording_unavailable"


#: what is queued: session id, when, kind, then its data and weight, and how many events it is:
#: one event's data, or statements that arrived together as ``(style, raw text)`` pairs or as
#: the JSON a relay rendered (one queued item for all of them: the relay's hand-over costs one
#: append, not one per statement)
_Queued = tuple[int, datetime, str, dict[str, Any] | list[tuple[str, bytes]] | bytes, int, int]


class RecordingSink:
    """One per node: the queue of every proxy session's events, and its writer.

    ``batch`` counts events as the queue does: a statement a relay rendered and its duration
    are two. Its default keeps the writer on its ``interval`` at the rates one node serves
    (a batch of 5,000 wrote about twice as often under pgbench, and the writer's thread used
    about half again as much CPU; bench/README.md) and stays below the backpressure level (a
    quarter of ``max_events``), so that a flood is written early before any relay is paused."""

    def __init__(
        self,
        node: Node,
        *,
        interval: float = 0.1,
        batch: int = 10_000,
        batch_bytes: int = 4 << 20,
        max_events: int = 50_000,
        max_bytes: int = 64 << 20,
        on_failure: Callable[[set[int], Cut], Awaitable[None]] | None = None,
    ) -> None:
        self.node = node
        self.interval = interval
        self.batch = batch
        self.batch_bytes = batch_bytes
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.on_failure = on_failure
        self._queue: deque[_Queued] = deque()
        self._events = 0  # events in the queue (a statement batch counts each statement)
        self._bytes = 0
        self._failing: str | None = None
        self._wake: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        #: backpressure: relays pause from HIGH until the queue is below LOW (events, bytes)
        self.high_events, self.high_bytes = max(1, max_events // 4), max(1, max_bytes // 4)
        self._backlog: asyncio.Future[None] | None = None
        self._inflight: set[asyncio.Future[None]] = set()
        self._thread = named_thread_pool("recorder", max_workers=1)

    def close(self) -> None:
        """Let the writer's thread go (after the last flush)."""
        self._thread.shutdown(wait=False)

    def __len__(self) -> int:
        """Events waiting in the queue (not those being written now)."""
        return self._events

    @property
    def failing(self) -> bool:
        """Did the last write fail (and none succeed since)?"""
        return self._failing is not None

    def backlog(self) -> asyncio.Future[None] | None:
        """None while the writer keeps up; else a future done once it has caught up (or the
        store failed: then the next :meth:`add` says so). Called on the proxy's loop."""
        if self._events < self.high_events and self._bytes < self.high_bytes:
            return None
        if self._backlog is None or self._backlog.done():
            self._backlog = asyncio.get_running_loop().create_future()
        if self._wake is not None:
            self._wake.set()  # write now, not at the next interval
        return self._backlog

    def _release_backlog(self, failed: bool = False) -> None:
        waiting = self._backlog
        if waiting is None or waiting.done():
            return
        if failed or (self._events < self.high_events // 2 and self._bytes < self.high_bytes // 2):
            waiting.set_result(None)
            self._backlog = None

    def add(self, session_id: int, kind: str, data: dict[str, Any]) -> None:
        """Queue one event (timestamped now). Raises RecordingUnavailable instead of dropping."""
        sessions.check_event_kind(kind)
        self._put(session_id, kind, data, _size(data))

    def add_statement(self, session_id: int, style: str, text: bytes) -> None:
        """Queue a statement's text as the client sent it (recorded as a ``query`` event with
        ``text`` decoded from UTF-8, undecodable bytes as U+FFFD, and ``kind`` = ``style``).
        The relay's fast path: nothing is decoded or encoded here. Same refusals as :meth:`add`
        (what has already gone to the server is :meth:`add_forwarded`'s)."""
        self.add_statements(session_id, ((style, text),))

    def add_statements(
        self, session_id: int, statements: Sequence[tuple[str, bytes]] | RenderedStatements
    ) -> None:
        """:meth:`add_statement` for ``(style, text)`` pairs of one session that arrived
        together, or for such statements already rendered: one timestamp, one check of the
        bounds, all queued or none."""
        payload: list[tuple[str, bytes]] | bytes
        if isinstance(statements, RenderedStatements):
            count, payload = statements.count, statements.json
            size = _rendered_size(count, payload)
        else:
            payload = list(statements)
            count = len(payload)
            size = _BASE_SIZE * count + sum(len(text) for _, text in payload)
        if not count:
            return
        refusal = self._refusal(size, count)
        if refusal is not None:
            raise RecordingUnavailable(refusal)
        self._queue.append((session_id, self.node.clock(), "query", payload, size, count))
        self._counted(count, size)

    def add_forwarded(self, batch: Sequence[tuple[int, int, bytes]]) -> None:
        """Statements that have already gone to the server, or their durations, rendered, of
        one session or several: ``(session id, count, JSON)`` each, as
        :class:`RenderedStatements` holds them (the native relay hands over every session it
        serves in one call: the loop pays per hand-over, not per session). One timestamp and
        one check of the bounds for all. They ran, so all are queued whatever the refusal
        (kept, and retried if the store fails), and the refusal is raised after: every session
        of the batch must then end and forward nothing more."""
        count = sum(n for _, n, _ in batch)
        if not count:
            return
        sizes = [_rendered_size(n, payload) for _, n, payload in batch]
        weight = sum(sizes)
        refusal = self._refusal(weight, count)
        at = self.node.clock()
        append = self._queue.append
        for (session_id, n, payload), size in zip(batch, sizes, strict=True):
            if n:
                append((session_id, at, "query", payload, size, n))
        self._counted(count, weight)
        if refusal is not None:
            raise RecordingUnavailable(refusal)

    def _counted(self, count: int, size: int) -> None:
        """Count events just queued; a full batch wakes the writer."""
        self._events += count
        self._bytes += size
        if self._events >= self.batch and self._wake is not None:
            self._wake.set()

    @property
    def available(self) -> bool:
        """Would an event be taken now (the store did not fail its last write)?"""
        return self._failing is None

    def _refusal(self, size: int, count: int = 1) -> str | None:
        if self._failing is not None:
            return f"{RECORDING_LOST}: {self._failing}"
        # one event larger than the byte bound (a huge statement, already in memory) is taken
        # when nothing else waits; the bound holds for the rest
        full = self._bytes > 0 and self._bytes + size > self.max_bytes
        if self._events + count > self.max_events or full:
            return f"{RECORDING_LOST}: the recording queue is full"
        return None

    def _put(self, session_id: int, kind: str, data: dict[str, Any], size: int) -> None:
        refusal = self._refusal(size)
        if refusal is not None:
            raise RecordingUnavailable(refusal)
        self._queue.append((session_id, self.node.clock(), kind, data, size, 1))
        self._counted(1, size)

    async def flush(self) -> None:
        """Write everything queued until now. Raises RecordingUnavailable if the store refused."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._inflight:  # the write of a cancelled flush: its events are back if it failed
                await asyncio.wait(set(self._inflight))
            # only what is queued now: under load the queue never empties
            left = len(self._queue)
            while left > 0:
                taken, weight = self._take(left)
                write = asyncio.get_running_loop().run_in_executor(
                    self._thread, _write, self.node, taken
                )
                self._inflight.add(write)
                write.add_done_callback(self._inflight.discard)
                try:
                    # a cancelled flush (a shutdown's time limit) must not cancel a write the
                    # executor has not started: its events, taken off the queue, would be lost
                    await asyncio.shield(write)
                except asyncio.CancelledError:
                    write.add_done_callback(partial(self._settle, taken, weight))
                    raise
                except Exception as exc:
                    self._requeue(taken)
                    await self._failed(exc)
                    self._release_backlog(failed=True)
                    raise RecordingUnavailable(f"{RECORDING_LOST}: {self._failing}") from None
                left -= len(taken)
                self._written(weight)
                if self._failing is not None:
                    log.warning("session recordings are stored again")
                    self._failing = None

    def _settle(self, taken: list[_Queued], weight: int, write: asyncio.Future[None]) -> None:
        """The end of a write whose flush was cancelled: its events go back if it failed."""
        if write.cancelled() or write.exception() is not None:
            self._requeue(taken)
        else:
            self._written(weight)

    def _written(self, weight: int) -> None:
        self._bytes -= weight
        self._release_backlog()

    def _take(self, n: int) -> tuple[list[_Queued], int]:
        """Up to ``n`` queued items holding up to ``batch`` events, and fewer if they weigh
        more than ``batch_bytes`` (the first is always taken): a batch's chunks stay a bounded
        size."""
        taken: list[_Queued] = []
        weight = events = 0
        queue = self._queue
        while (
            n > 0 and queue and (not taken or (weight < self.batch_bytes and events < self.batch))
        ):
            queued = queue.popleft()
            taken.append(queued)
            weight += queued[4]
            events += queued[5]
            n -= 1
        self._events -= events
        return taken, weight

    def _requeue(self, taken: list[_Queued]) -> None:
        """A batch the store refused goes back to the front of the queue, in order."""
        self._queue.extendleft(reversed(taken))
        self._events += sum(queued[5] for queued in taken)

    async def _failed(self, exc: Exception) -> None:
        first = self._failing is None
        self._failing = f"the store refused it ({type(exc).__name__})"
        if first:
            log.error("session recordings cannot be stored (%s): cutting sessions", exc)
        waiting = {queued[0] for queued in self._queue}
        if self.on_failure is not None and waiting:
            await self.on_failure(waiting, Cut(RECORDING_LOST))

    async def run(self) -> None:
        """Write the queue every ``interval`` seconds or every ``batch`` events, forever."""
        self._wake = asyncio.Event()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            if not self._queue:
                continue
            try:
                await self.flush()
            except RecordingUnavailable:
                await asyncio.sleep(self.interval)  # retried; sessions were already cut
            except Exception:
                log.exception("the recording writer failed")


#: what a queued event weighs besides its texts
_BASE_SIZE = 128


def _size(data: dict[str, Any]) -> int:
    """What an event weighs in the queue: its strings, nested ones included (a terminal's
    output is a list of events holding the text), plus a fixed part."""
    return _BASE_SIZE + _strings_size(data)


def _rendered_size(count: int, json: bytes) -> int:
    """What statements a relay rendered weigh in the queue."""
    return _BASE_SIZE * count + len(json)


def _strings_size(value: object) -> int:
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, dict):
        return sum(_strings_size(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_strings_size(v) for v in value)
    return 0


def _write(node: Node, taken: list[_Queued]) -> None:
    """Store queued events (in the writer's thread: the decoding happens here too), one chunk
    per session: what an event costs here is its entry's JSON text (a statement's is formatted
    here directly: a sixth of what the JSON encoder takes) and its share of one seal and one
    INSERT."""
    chunks: dict[int, sessions.Chunk] = {}
    for session_id, at, kind, payload, _, _ in taken:
        chunk = chunks.get(session_id)
        if chunk is None:
            chunks[session_id] = chunk = (session_id, at, [])
        offset = (at - chunk[1]) // _MICROSECOND
        if isinstance(payload, bytes):  # statements a relay rendered
            chunk[2].append(sessions.statements_entry(offset, payload))
        elif isinstance(payload, list):  # statements: one offset for all
            entries = chunk[2]
            for style, text in payload:
                entry = _STATEMENT_ENTRIES.get(style)
                if entry is None:
                    entry = _STATEMENT_ENTRIES[style] = _statement_entry(style)
                entries.append(entry % (offset, _json_str(text.decode("utf-8", "replace"))))
        else:
            chunk[2].append(sessions.chunk_entry(offset, kind, payload))
    sessions.record_chunks(node, list(chunks.values()))


_MICROSECOND = timedelta(microseconds=1)
_json_str = encode_basestring_ascii


def _statement_entry(style: str) -> str:
    """The %-format of a statement's entry of this style: what chunk_entry makes of
    ``("query", {"text": ..., "kind": style})`` (keys sorted, ASCII), offset and text left."""
    quoted = _json_str(style).replace("%", "%%")
    return '[%d,"query",{"kind":' + quoted + ',"text":%s}]'


#: the entry format of each style seen (a relay uses two: "simple" and "extended")
_STATEMENT_ENTRIES: dict[str, str] = {}


__all__ = ["RECORDING_LOST", "RecordingSink", "RecordingUnavailable"]

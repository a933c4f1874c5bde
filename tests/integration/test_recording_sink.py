"""The proxy's recording sink: events queued off the relay's path, written in batches, and
sessions cut (never events dropped) when the store cannot take them. A real store (SQLite or
PostgreSQL per ``--db``), failed by a real trigger."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import zlib
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from jitvault.domain import Sensitive
from jitvault.plugin_api import RenderedStatements, render_statement, statements_done
from jitvault.proxy import SessionRegistry
from jitvault.proxy.recording import RECORDING_LOST, RecordingSink, RecordingUnavailable
from jitvault.services import Node, keys, sessions
from jitvault.storage import sealed, session_store
from jitvault.storage import tables as t
from jitvault.storage.tables import SESSION_EVENT_DATA
from tests.conftest import Booted
from tests.integration.test_session_registry import Handle, _open
from tests.support import inserts_refused


def recordings_refused(node: Node) -> AbstractContextManager[None]:
    """Every INSERT INTO session_events fails (a real trigger) until the block ends."""
    return inserts_refused(node, "session_events")


def _texts(node: Node, session_id: int) -> list[str]:
    return [e["data"]["text"] for e in sessions.session_events(node, session_id)]


def test_events_are_written_in_batches_in_order_only_when_flushed(booted: Booted) -> None:
    ticket, _ = _open(booted)
    sink = RecordingSink(booted.node, batch=100)
    sid = ticket.session_id
    for i in range(1_050):
        sink.add(sid, "query", {"text": f"SELECT {i}", "kind": "simple"})
    assert _texts(booted.node, sid) == []  # queued, not written: the relay did not wait
    asyncio.run(sink.flush())
    assert _texts(booted.node, sid) == [f"SELECT {i}" for i in range(1_050)]
    assert len(sink) == 0


def test_a_full_queue_refuses_new_events_instead_of_dropping_them(booted: Booted) -> None:
    ticket, _ = _open(booted)
    sink = RecordingSink(booted.node, max_events=10)
    for i in range(10):
        sink.add(ticket.session_id, "query", {"text": f"SELECT {i}"})
    with pytest.raises(RecordingUnavailable, match="queue is full"):
        sink.add(ticket.session_id, "query", {"text": "SELECT 10"})
    asyncio.run(sink.flush())
    sink.add(ticket.session_id, "query", {"text": "SELECT 10"})  # room again
    asyncio.run(sink.flush())
    assert len(_texts(booted.node, ticket.session_id)) == 11


def test_a_statement_larger_than_the_byte_bound_is_kept_when_nothing_else_waits(
    booted: Booted,
) -> None:
    ticket, _ = _open(booted)
    sink = RecordingSink(booted.node, max_bytes=10_000)
    huge = "SELECT '" + "x" * 50_000 + "'"
    sink.add(ticket.session_id, "query", {"text": huge})
    with pytest.raises(RecordingUnavailable, match="queue is full"):
        sink.add(ticket.session_id, "query", {"text": "SELECT 1"})
    asyncio.run(sink.flush())
    assert _texts(booted.node, ticket.session_id) == [huge]


def test_terminal_output_nested_in_an_event_counts_towards_the_byte_bound(
    booted: Booted,
) -> None:
    """An SSH terminal's output is a list of asciicast events inside the event: it weighs what
    its text weighs, or a stuck store would let it grow the queue without bound."""
    ticket, _ = _open(booted)
    sink = RecordingSink(booted.node, max_bytes=100_000)
    chunk = {"channel": 1, "events": [[0.5, "o", "a" * 30_000], [0.6, "r", "80x24"]]}
    for _ in range(3):
        sink.add(ticket.session_id, "asciicast", chunk)

    async def backlog() -> bool:
        return sink.backlog() is not None

    assert asyncio.run(backlog())  # 90 kB queued: past a quarter of the bound
    with pytest.raises(RecordingUnavailable, match="queue is full"):
        sink.add(ticket.session_id, "asciicast", chunk)


def test_a_store_that_refuses_a_batch_cuts_the_waiting_sessions_and_keeps_their_events(
    booted: Booted,
) -> None:
    ticket, _ = _open(booted)
    sid = ticket.session_id
    registry = SessionRegistry(booted.node)
    handle = Handle(sid)
    registry.add(handle, ticket.grant.expires_at, ticket.grant.id)
    sink = RecordingSink(booted.node, on_failure=registry.cut)

    async def scenario() -> None:
        sink.add(sid, "query", {"text": "SELECT 'before'"})
        with recordings_refused(booted.node):
            with pytest.raises(RecordingUnavailable):
                await sink.flush()
            assert handle.reasons == [RECORDING_LOST]
            assert sink.failing
            # fail closed: nothing more is accepted while the store refuses
            with pytest.raises(RecordingUnavailable, match="cannot be stored"):
                sink.add(sid, "query", {"text": "SELECT 'during'"})
        await sink.flush()  # the store is back: the kept event is written

    asyncio.run(scenario())
    assert not sink.failing
    assert _texts(booted.node, sid) == ["SELECT 'before'"]
    assert len(registry) == 0


def test_the_writer_task_flushes_on_its_interval(booted: Booted) -> None:
    ticket, _ = _open(booted)
    sink = RecordingSink(booted.node, interval=0.05)

    async def scenario() -> None:
        writer = asyncio.get_running_loop().create_task(sink.run())
        await asyncio.sleep(0)
        sink.add(ticket.session_id, "query", {"text": "SELECT 1"})
        for _ in range(100):  # bounded: 5 s
            await asyncio.sleep(0.05)
            if await asyncio.to_thread(_texts, booted.node, ticket.session_id):
                break
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer

    asyncio.run(scenario())
    assert _texts(booted.node, ticket.session_id) == ["SELECT 1"]


def test_the_default_batch_holds_an_interval_of_a_loaded_node_and_comes_before_backpressure(
    booted: Booted,
) -> None:
    """The writer writes on its interval, not per batch, at what one node relays (pgbench
    select-only through the native relay: about 40,000 statements a second, each with its
    duration, two events), and a flood is written early before any relay is paused."""
    sink = RecordingSink(booted.node)
    an_interval = 40_000 * 2 * sink.interval
    assert an_interval < sink.batch < sink.high_events


def _session_with_sink(booted: Booted, **limits: int) -> tuple[int, RecordingSink]:
    """A live session's id and a sink of its own (with these limits)."""
    ticket, _ = _open(booted)
    return ticket.session_id, RecordingSink(booted.node, **limits)


def test_statements_queued_as_raw_bytes_are_stored_decoded_in_order_with_other_events(
    booted: Booted,
) -> None:
    sid, sink = _session_with_sink(booted, batch=2)
    sink.add_statement(sid, "simple", "SELECT 'café'".encode())
    sink.add(sid, "note", {"text": "between"})
    sink.add_statement(sid, "extended", b"SELECT $1 -- \xff\xfe")
    asyncio.run(sink.flush())
    events = sessions.session_events(booted.node, sid)
    assert [(e["kind"], e["data"]) for e in events] == [
        ("query", {"text": "SELECT 'café'", "kind": "simple"}),
        ("note", {"text": "between"}),
        ("query", {"text": "SELECT $1 -- \ufffd\ufffd", "kind": "extended"}),
    ]
    assert all(e["ts"] is not None for e in events)


def test_raw_statements_count_against_the_byte_bound_and_are_refused_while_failing(
    booted: Booted,
) -> None:
    sid, sink = _session_with_sink(booted, max_bytes=10_000)
    sink.add_statement(sid, "simple", b"SELECT '" + b"x" * 9_000 + b"'")
    with pytest.raises(RecordingUnavailable, match="queue is full"):
        sink.add_statement(sid, "simple", b"SELECT '" + b"y" * 1_000 + b"'")
    sink.add_statement(sid, "simple", b"SELECT 1")  # small enough: still room

    async def scenario() -> None:
        with recordings_refused(booted.node):
            with pytest.raises(RecordingUnavailable):
                await sink.flush()
            with pytest.raises(RecordingUnavailable, match="cannot be stored"):
                sink.add_statement(sid, "simple", b"SELECT 'during'")
        await sink.flush()

    asyncio.run(scenario())
    assert _texts(booted.node, sid) == ["SELECT '" + "x" * 9_000 + "'", "SELECT 1"]


def _rendered(*statements: tuple[str, str]) -> RenderedStatements:
    """What a relay in native code hands over (its rendering is tested against json's in
    tests/unit/test_pg_native_json.py)."""
    objects = [
        json.dumps({"kind": kind, "text": text}, ensure_ascii=True, sort_keys=True,
                   separators=(",", ":"))
        for kind, text in statements
    ]  # fmt: skip
    return RenderedStatements(len(objects), ",".join(objects).encode())


def _one(session_id: int, statements: RenderedStatements) -> list[tuple[int, int, bytes]]:
    """A hand-over of one session's forwarded statements."""
    return [(session_id, statements.count, statements.json)]


def test_a_statement_already_forwarded_is_queued_whatever_the_refusal_then_refused(
    booted: Booted,
) -> None:
    """The native relay forwards a statement before the core has it (it is queued in the
    relay's own memory first): the core keeps it even when full or failing, then says no."""
    sid, sink = _session_with_sink(booted, max_events=2)
    sink.add_statement(sid, "simple", b"SELECT 1")
    sink.add_statement(sid, "simple", b"SELECT 2")
    with pytest.raises(RecordingUnavailable, match="queue is full"):
        sink.add_statement(sid, "simple", b"SELECT 'refused'")
    with pytest.raises(RecordingUnavailable, match="queue is full"):
        sink.add_forwarded(_one(sid, _rendered(("simple", "SELECT 'ran: full'"))))
    assert sink.available  # full is not failing

    async def scenario() -> None:
        with recordings_refused(booted.node):
            with pytest.raises(RecordingUnavailable):
                await sink.flush()
            assert not sink.available
            with pytest.raises(RecordingUnavailable, match="cannot be stored"):
                sink.add_forwarded(_one(sid, _rendered(("extended", "SELECT 'ran: failing'"))))
        await sink.flush()
        assert sink.available

    asyncio.run(scenario())
    assert _texts(booted.node, sid) == [
        "SELECT 1",
        "SELECT 2",
        "SELECT 'ran: full'",
        "SELECT 'ran: failing'",
    ]


def test_statements_handed_over_together_are_queued_all_or_none_in_order(
    booted: Booted,
) -> None:
    sid, sink = _session_with_sink(booted, max_events=4)
    sink.add_statements(sid, [("simple", b"SELECT 1"), ("extended", b"SELECT $1")])
    with pytest.raises(RecordingUnavailable, match="queue is full"):  # 3 do not fit in 2
        sink.add_statements(sid, [("simple", b"SELECT 'no'")] * 3)
    assert len(sink) == 2
    asyncio.run(sink.flush())
    events = sessions.session_events(booted.node, sid)
    assert [(e["data"]["kind"], e["data"]["text"]) for e in events] == [
        ("simple", "SELECT 1"),
        ("extended", "SELECT $1"),
    ]


def test_rendered_statements_are_read_back_as_query_events_in_order_and_count_one_by_one(
    booted: Booted,
) -> None:
    sid, sink = _session_with_sink(booted, max_events=6)
    sink.add_statement(sid, "simple", b"SELECT 'before'")
    sink.add_statements(sid, _rendered(("simple", "SELECT 'caf\u00e9'"), ("extended", "SELECT $1")))
    sink.add(sid, "note", {"text": "between"})
    assert len(sink) == 4
    with pytest.raises(RecordingUnavailable, match="queue is full"):  # 3 do not fit in 2
        sink.add_statements(sid, _rendered(*[("simple", "SELECT 'no'")] * 3))
    with pytest.raises(RecordingUnavailable, match="queue is full"):  # they ran: all kept
        sink.add_forwarded(_one(sid, _rendered(*[("simple", "SELECT 'ran'")] * 3)))
    sink.add_statements(sid, RenderedStatements(0, b""))  # nothing: nothing queued
    assert len(sink) == 7
    asyncio.run(sink.flush())
    events = sessions.session_events(booted.node, sid)
    assert [(e["kind"], e["data"]) for e in events] == [
        ("query", {"kind": "simple", "text": "SELECT 'before'"}),
        ("query", {"kind": "simple", "text": "SELECT 'caf\u00e9'"}),
        ("query", {"kind": "extended", "text": "SELECT $1"}),
        ("note", {"text": "between"}),
        *[("query", {"kind": "simple", "text": "SELECT 'ran'"})] * 3,
    ]
    assert events[1]["ts"] == events[2]["ts"]  # arrived together: one time


def test_a_hand_over_of_several_sessions_is_queued_whole_with_one_time_then_refused(
    booted: Booted,
) -> None:
    """The native relay hands over every session's forwarded statements in one call: each
    session's are kept, in its own recording, at one time; a full queue or a failing store
    keeps them all (they ran) and then refuses, so that every session of the batch ends."""
    ticket, alice = _open(booted)
    token, _ = sessions.issue_session_token(booted.node, alice, ticket.grant.request_id)
    other = sessions.open_session(booted.node, token, "postgres").session_id
    sid, sink = ticket.session_id, RecordingSink(booted.node, max_events=4)
    first, second = (
        _rendered(("simple", "SELECT 1"), ("simple", "SELECT 2")),
        _rendered(("extended", "SELECT $1")),
    )
    sink.add_forwarded([(sid, first.count, first.json), (other, second.count, second.json)])
    sink.add_forwarded([(other, 0, b"")])  # nothing: nothing queued
    assert len(sink) == 3
    ran = _rendered(("simple", "SELECT 'ran: full'"))
    with pytest.raises(RecordingUnavailable, match="queue is full"):  # 2 do not fit in 1
        sink.add_forwarded([(sid, ran.count, ran.json), (other, ran.count, ran.json)])
    assert len(sink) == 5

    async def scenario() -> None:
        with recordings_refused(booted.node):
            with pytest.raises(RecordingUnavailable):
                await sink.flush()
            late = _rendered(("simple", "SELECT 'ran: failing'"))
            with pytest.raises(RecordingUnavailable, match="cannot be stored"):
                sink.add_forwarded([(other, late.count, late.json)])
        await sink.flush()

    asyncio.run(scenario())
    assert _texts(booted.node, sid) == ["SELECT 1", "SELECT 2", "SELECT 'ran: full'"]
    assert _texts(booted.node, other) == [
        "SELECT $1",
        "SELECT 'ran: full'",
        "SELECT 'ran: failing'",
    ]
    times = [e["ts"] for e in sessions.session_events(booted.node, sid)]
    assert times[0] == times[1] == sessions.session_events(booted.node, other)[0]["ts"]


def test_durations_go_to_the_oldest_statements_without_one_across_writes_and_forms(
    booted: Booted,
) -> None:
    """Durations (plugin_api.statements_done) are read back onto the statements they follow:
    the oldest ones still without one, whichever form the statements were queued in (pairs or
    rendered), across separate writes (chunk rows); a statement never answered (its session
    cut) has none, and a duration whose form is not one this code writes is ignored."""
    sid, sink = _session_with_sink(booted)
    sink.add_statements(sid, [("simple", b"SELECT 1"), ("extended", b"SELECT $1")])
    sink.add_statements(sid, _rendered(("simple", "SELECT 2"), ("simple", "SELECT 3")))
    sink.add_statements(sid, statements_done([(1, 1500)]))
    asyncio.run(sink.flush())  # one row: SELECT 1 has its duration, the others wait
    sink.add_statements(sid, statements_done([(2, 250_000), (1, 7)]))
    sink.add_statements(sid, RenderedStatements(2, b'{"done":[1,"x"]},{"done":[true,5]}'))
    sink.add_statement(sid, "simple", b"SELECT 'cut'")
    asyncio.run(sink.flush())
    events = sessions.session_events(booted.node, sid)
    assert [(e["data"]["text"], e["data"].get("duration_ms")) for e in events] == [
        ("SELECT 1", 1.5),
        ("SELECT $1", 250.0),
        ("SELECT 2", 250.0),
        ("SELECT 3", 0.007),
        ("SELECT 'cut'", None),
    ]


def test_statements_handed_over_late_are_read_back_at_the_time_they_were_sent(
    booted: Booted,
) -> None:
    """A relay that hands statements over late (the native one) leads each client read's with
    ``{"ago": microseconds}``: its statements are read back that long before the batch's time,
    and those after a later mark by that one; a mark of a form this code does not write gives
    the batch's own time. Marks are not statements (not counted, not shown)."""
    sid, sink = _session_with_sink(booted)
    batch = b",".join(
        [
            b'{"ago":300000}',
            render_statement("simple", b"SELECT 1"),
            render_statement("simple", b"SELECT 2"),
            b'{"ago":120000}',
            render_statement("simple", b"SELECT 3"),
            b'{"done":[3,5]}',
            b'{"ago":-4}',
            render_statement("simple", b"SELECT 4"),
            b'{"ago":"x"}',
            render_statement("simple", b"SELECT 5"),
        ]
    )
    sink.add_statements(sid, RenderedStatements(6, batch))
    assert len(sink) == 6
    asyncio.run(sink.flush())
    events = sessions.session_events(booted.node, sid)
    assert [e["data"]["text"] for e in events] == [f"SELECT {n}" for n in range(1, 6)]
    at = [e["ts"] for e in events]
    assert at[0] == at[1] == at[3] - timedelta(microseconds=300_000)
    assert at[2] == at[3] - timedelta(microseconds=120_000)
    assert at[3] == at[4]  # the batch's time
    assert [e["data"].get("duration_ms") for e in events] == [0.005] * 3 + [None] * 2


def test_a_run_of_a_prepared_statement_is_read_back_with_the_text_it_was_prepared_with(
    booted: Booted,
) -> None:
    """A run (``execute``, by name) gets the text of its name's latest preparation in the
    session, across rows; a name prepared again (after a Close) gives later runs the new text;
    a run whose preparation was not recorded has no text. The unnamed statement's runs (name
    ``""``) get its latest Parse's text, until a simple query drops it, as the server does."""
    sid, sink = _session_with_sink(booted)
    parts = [
        render_statement("extended", b"SELECT $1", b"s1"),
        render_statement("execute", None, b"s1"),
        render_statement("execute", None, b"s2"),
    ]
    sink.add_statements(sid, RenderedStatements(3, b",".join(parts)))
    asyncio.run(sink.flush())
    parts = [
        render_statement("execute", None, b"s1"),
        render_statement("extended", b"SELECT 2", b"s1"),
        render_statement("extended", b"SELECT 'unnamed'", b""),
        render_statement("execute", None, b"s1"),
        render_statement("execute", None, b""),
        render_statement("simple", b"SELECT 3"),
        render_statement("execute", None, b""),
    ]
    sink.add_statements(sid, RenderedStatements(7, b",".join(parts)))
    sink.add_statements(sid, statements_done([(10, 40)]))
    asyncio.run(sink.flush())
    events = sessions.session_events(booted.node, sid)
    assert [e["data"] for e in events] == [
        {"kind": "extended", "name": "s1", "text": "SELECT $1", "duration_ms": 0.04},
        {"kind": "execute", "name": "s1", "text": "SELECT $1", "duration_ms": 0.04},
        {"kind": "execute", "name": "s2", "duration_ms": 0.04},
        {"kind": "execute", "name": "s1", "text": "SELECT $1", "duration_ms": 0.04},
        {"kind": "extended", "name": "s1", "text": "SELECT 2", "duration_ms": 0.04},
        {"kind": "extended", "text": "SELECT 'unnamed'", "duration_ms": 0.04},
        {"kind": "execute", "name": "s1", "text": "SELECT 2", "duration_ms": 0.04},
        {"kind": "execute", "name": "", "text": "SELECT 'unnamed'", "duration_ms": 0.04},
        {"kind": "simple", "text": "SELECT 3", "duration_ms": 0.04},
        {"kind": "execute", "name": "", "duration_ms": 0.04},
    ]


def test_a_run_gets_the_text_of_a_preparation_queued_as_a_plain_statement(
    booted: Booted,
) -> None:
    """The Python relay queues a feed's statements as ``(style, text)`` pairs unless a run or a
    name is among them: a Parse of the unnamed statement alone in its feed is such a pair, and
    a run of it in a later feed still gets its text (and a simple query queued as a pair still
    drops it)."""
    sid, sink = _session_with_sink(booted)
    sink.add_statements(sid, [("extended", b"SELECT 'alone'")])
    sink.add_statements(sid, RenderedStatements(1, render_statement("execute", None, b"")))
    sink.add_statements(sid, [("simple", b"SELECT 4")])
    sink.add_statements(sid, RenderedStatements(1, render_statement("execute", None, b"")))
    asyncio.run(sink.flush())
    events = sessions.session_events(booted.node, sid)
    assert [e["data"] for e in events] == [
        {"kind": "extended", "text": "SELECT 'alone'"},
        {"kind": "execute", "name": "", "text": "SELECT 'alone'"},
        {"kind": "simple", "text": "SELECT 4"},
        {"kind": "execute", "name": ""},
    ]


def test_statements_handed_over_together_count_one_by_one_in_batches_and_refusals(
    booted: Booted,
) -> None:
    """A hand-over is one queued item, but each statement in it counts: against the bound, in
    the queue's length, and in a write's ``batch`` (a write stops taking items at ``batch``
    events); a refused write puts them back, counted again."""
    sid, sink = _session_with_sink(booted, batch=5, max_events=12)
    for n in range(3):
        sink.add_statements(sid, [("simple", f"SELECT {n}{i}".encode()) for i in range(3)])
    assert len(sink) == 9
    with pytest.raises(RecordingUnavailable, match="queue is full"):
        sink.add_statements(sid, [("simple", b"SELECT 'no'")] * 4)
    with recordings_refused(booted.node), pytest.raises(RecordingUnavailable):
        asyncio.run(sink.flush())
    assert len(sink) == 9  # put back, each statement counted
    asyncio.run(sink.flush())
    assert len(sink) == 0
    # 3 + 3 reach the batch of 5: two writes, one chunk row each
    assert [kind for kind, _ in _rows(booted.node, sid)] == [sessions.DEFLATED_CHUNK_KIND] * 2
    assert _texts(booted.node, sid) == [f"SELECT {n}{i}" for n in range(3) for i in range(3)]


def _rows(node: Node, session_id: int) -> list[tuple[str, str]]:
    with node.read() as conn:
        return [
            (str(kind), str(data))
            for kind, data in conn.execute(
                select(t.session_events.c.kind, t.session_events.c.data)
                .where(t.session_events.c.session_id == session_id)
                .order_by(t.session_events.c.id)
            )
        ]


def test_a_batch_of_a_sessions_events_is_one_sealed_chunk_row_read_back_in_order(
    booted: Booted,
) -> None:
    sid, sink = _session_with_sink(booted, batch=100)
    for i in range(250):
        sink.add_statement(sid, "simple", f"SELECT 'chunked-{i}'".encode())
    asyncio.run(sink.flush())
    rows = _rows(booted.node, sid)
    # batches of 100, 100, 50
    assert [kind for kind, _ in rows] == [sessions.DEFLATED_CHUNK_KIND] * 3
    assert all(data.startswith("jv1:") and "chunked" not in data for _, data in rows)
    events = sessions.session_events(booted.node, sid)
    assert [e["data"]["text"] for e in events] == [f"SELECT 'chunked-{i}'" for i in range(250)]
    assert {e["kind"] for e in events} == {"query"}
    times = [e["ts"] for e in events]
    assert times == sorted(times)


def test_each_events_time_is_kept_to_the_microsecond_inside_a_chunk(booted: Booted) -> None:
    sid, _ = _session_with_sink(booted)
    t0 = datetime(2026, 11, 29, 12, 0, 0, 123_456, tzinfo=UTC)
    at = [t0, t0 + timedelta(seconds=1, microseconds=7), t0 + timedelta(hours=3, microseconds=1)]
    sessions.record_events(
        booted.node, [sessions.RecordedEvent(sid, "note", ts, {"n": i}) for i, ts in enumerate(at)]
    )
    assert len(_rows(booted.node, sid)) == 1
    events = sessions.session_events(booted.node, sid)
    got = [(e["ts"], e["data"]) for e in events]
    assert got == [(ts, {"n": i}) for i, ts in enumerate(at)]
    # aware on every store (SQLite hands back naive datetimes): an API client or --json
    # reader gets each time with its offset, as it gets the session's start and end
    assert all(e["ts"].utcoffset() == timedelta(0) for e in events)


def test_rows_written_before_chunks_and_before_compression_are_still_read_in_order(
    booted: Booted,
) -> None:
    """Earlier versions wrote one event per row, then chunks as plain JSON (CHUNK_KIND): a
    session recorded then is read back whole next to what is written now."""
    sid, sink = _session_with_sink(booted)
    node = booted.node
    old = [("query", {"text": "SELECT 'old-1'", "kind": "simple"}), ("note", {"text": "old-2"})]
    old_chunk = [("query", {"kind": "simple", "text": "SELECT 'old-3'"}), ("note", {"n": 4})]
    rows = [(kind, json.dumps(data).encode()) for kind, data in old]
    entries = [sessions.chunk_entry(i, kind, data) for i, (kind, data) in enumerate(old_chunk)]
    rows.append((sessions.CHUNK_KIND, ("[" + ",".join(entries) + "]").encode()))
    with node.write() as tx:
        ids = session_store.reserve_event_ids(tx.conn, len(rows))
        payloads = [Sensitive(payload) for _, payload in rows]
        term, envelopes = sealed.seal_new(
            tx.conn, tx.keyring, SESSION_EVENT_DATA, list(zip(ids, payloads, strict=True))
        )
        session_store.events_insert(
            tx.conn,
            [
                (i, sid, kind, node.clock(), env)
                for i, (kind, _), env in zip(ids, rows, envelopes, strict=True)
            ],
            term,
        )
    sink.add_statement(sid, "simple", b"SELECT 'new-1'")
    sink.add(sid, "note", {"text": "new-2"})
    asyncio.run(sink.flush())
    assert [kind for kind, _ in _rows(node, sid)] == [
        "query",
        "note",
        sessions.CHUNK_KIND,
        sessions.DEFLATED_CHUNK_KIND,
    ]
    assert [(e["kind"], e["data"]) for e in sessions.session_events(node, sid)] == [
        *old,
        *old_chunk,
        ("query", {"text": "SELECT 'new-1'", "kind": "simple"}),
        ("note", {"text": "new-2"}),
    ]


def test_a_chunk_is_compressed_before_it_is_sealed(booted: Booted) -> None:
    """Statements repeat: a chunk of them is stored in a fraction of its JSON's size, and read
    back whole."""
    sid, sink = _session_with_sink(booted)
    texts = [
        f"SELECT abalance FROM pgbench_accounts WHERE aid = {i * 7919 % 100_000};"
        for i in range(2_000)
    ]
    sink.add_statements(sid, [("simple", text.encode()) for text in texts])
    asyncio.run(sink.flush())
    ((kind, data),) = _rows(booted.node, sid)
    assert kind == sessions.DEFLATED_CHUNK_KIND
    json_size = sum(len(json.dumps({"kind": "simple", "text": text})) for text in texts)
    assert len(data) < json_size / 4
    assert _texts(booted.node, sid) == texts


@pytest.mark.parametrize(
    "kind", [sessions.CHUNK_KIND, sessions.DEFLATED_CHUNK_KIND, sessions.STATEMENTS_ENTRY]
)
def test_an_event_cannot_take_a_kind_the_stored_format_keeps(booted: Booted, kind: str) -> None:
    sid, sink = _session_with_sink(booted)
    with pytest.raises(ValueError, match=kind):
        sink.add(sid, kind, {"text": "a fake chunk"})
    with pytest.raises(ValueError, match=kind):
        sessions.record_event(booted.node, sid, kind, {"text": "a fake chunk"})
    assert _rows(booted.node, sid) == []


def test_statement_texts_of_any_bytes_are_stored_as_the_json_encoder_would_store_them(
    booted: Booted,
) -> None:
    sid, sink = _session_with_sink(booted)
    texts = [
        b'SELECT \'"quoted"\' AS "x\\y"',
        b"SELECT E'\\n\\t' -- tab\there\nnewline\r\x00nul \x1b esc",
        "SELECT 'ünïcødé 名前 🙂 \u2028'".encode(),
        b"SELECT '\xff\xfe\xc3' -- not UTF-8",
        b"",
    ]
    for text in texts:
        sink.add_statement(sid, "simple", text)
    asyncio.run(sink.flush())
    with booted.node.read() as conn:
        (envelope,) = conn.execute(
            select(t.session_events.c.data).where(t.session_events.c.session_id == sid)
        ).scalars()
        (row_id,) = conn.execute(
            select(t.session_events.c.id).where(t.session_events.c.session_id == sid)
        ).scalars()
    raw = zlib.decompress(
        booted.node.vault.keyring.decrypt(
            envelope, sealed.context_for(SESSION_EVENT_DATA, row_id)
        ).reveal()
    )
    entries = json.loads(raw)
    assert (
        raw.decode()
        == "["
        + ",".join(
            sessions.chunk_entry(
                e[0], "query", {"text": text.decode("utf-8", "replace"), "kind": "simple"}
            )
            for e, text in zip(entries, texts, strict=True)
        )
        + "]"
    )
    # the same object, byte for byte, as a relay that renders its statements itself records
    for e, text in zip(entries, texts, strict=True):
        assert f'[{e[0]},"query",{render_statement("simple", text).decode()}]' in raw.decode()
    assert [e["data"]["text"] for e in sessions.session_events(booted.node, sid)] == [
        text.decode("utf-8", "replace") for text in texts
    ]


def test_chunk_rows_are_moved_to_a_new_key_term_and_still_read(booted: Booted) -> None:
    sid, sink = _session_with_sink(booted)
    for i in range(5):
        sink.add_statement(sid, "simple", f"SELECT 'rekeyed-{i}'".encode())
    asyncio.run(sink.flush())
    with booted.node.read() as conn:
        (before,) = conn.execute(
            select(t.session_events.c.data_term).where(t.session_events.c.session_id == sid)
        ).scalars()
    keys.rotate_key(booted.node, booted.admin)
    keys.reencrypt_all(booted.node)
    with booted.node.read() as conn:
        (after,) = conn.execute(
            select(t.session_events.c.data_term).where(t.session_events.c.session_id == sid)
        ).scalars()
    assert after > before
    assert _texts(booted.node, sid) == [f"SELECT 'rekeyed-{i}'" for i in range(5)]


def test_a_backlog_is_announced_at_a_quarter_of_the_bound_and_released_below_an_eighth(
    booted: Booted,
) -> None:
    ticket, _ = _open(booted)
    sid = ticket.session_id

    async def scenario() -> None:
        sink = RecordingSink(booted.node, max_events=80, batch=5)
        for i in range(19):
            sink.add_statement(sid, "simple", f"SELECT {i}".encode())
        assert sink.backlog() is None  # 19 < 20: the writer keeps up
        sink.add_statement(sid, "simple", b"SELECT 19")
        backlog = sink.backlog()
        assert backlog is not None
        assert not backlog.done()
        assert sink.backlog() is backlog  # one backlog, whoever asks
        writer = asyncio.create_task(sink.run())  # woken by the backlog: writes at once
        try:
            await asyncio.wait_for(backlog, 5)
            assert len(sink) < 10
            assert sink.backlog() is None
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        await sink.flush()

    asyncio.run(scenario())
    assert _texts(booted.node, sid) == [f"SELECT {i}" for i in range(20)]


def test_a_backlog_is_released_when_the_store_fails_so_that_no_relay_waits_forever(
    booted: Booted,
) -> None:
    ticket, _ = _open(booted)

    async def scenario() -> None:
        sink = RecordingSink(booted.node, max_events=8)
        for i in range(2):
            sink.add_statement(ticket.session_id, "simple", f"SELECT {i}".encode())
        backlog = sink.backlog()
        assert backlog is not None
        with recordings_refused(booted.node), pytest.raises(RecordingUnavailable):
            await sink.flush()
        assert backlog.done()  # the relay reads again, and its next add is refused
        with pytest.raises(RecordingUnavailable):
            sink.add_statement(ticket.session_id, "simple", b"SELECT 2")

    asyncio.run(scenario())


@pytest.mark.parametrize("turns", [0, 1, 2, 5])
def test_a_flush_cancelled_mid_write_loses_and_repeats_nothing(booted: Booted, turns: int) -> None:
    # a shutdown gives the last flush a time limit: cancelling it must not cancel a write the
    # executor had not started yet (its events were already off the queue)
    ticket, _ = _open(booted)
    sid = ticket.session_id

    async def scenario() -> None:
        sink = RecordingSink(booted.node, batch=10)
        for i in range(100):
            sink.add_statement(sid, "simple", f"SELECT {i}".encode())
        # every thread of the default executor busy: the flush's write waits in its queue
        loop = asyncio.get_running_loop()
        busy = [loop.run_in_executor(None, time.sleep, 0.3) for _ in range(40)]
        flushing = asyncio.create_task(sink.flush())
        for _ in range(turns):
            await asyncio.sleep(0)
        flushing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flushing
        await asyncio.gather(*busy)
        await sink.flush()
        assert len(sink) == 0

    asyncio.run(scenario())
    assert _texts(booted.node, sid) == [f"SELECT {i}" for i in range(100)]

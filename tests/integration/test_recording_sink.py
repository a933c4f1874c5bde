"""The proxy's recording sink: events queued off the relay's path, written in batches, and
sessions cut (never events dropped) when the store cannot take them. A real store (SQLite or
PostgreSQL per ``--db``), failed by a real trigger."""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager

import pytest

from jitvault.proxy import SessionRegistry
from jitvault.proxy.recording import RECORDING_LOST, RecordingSink, RecordingUnavailable
from jitvault.services import Node, sessions
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


def test_a_store_that_refuses_a_batch_cuts_the_waiting_sessions_and_keeps_their_events(
    booted: Booted,
) -> None:
    ticket, _ = _open(booted)
    sid = ticket.session_id
    registry = SessionRegistry(booted.node)
    handle = Handle(sid)
    registry.add(handle, ticket.grant.expires_at)
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

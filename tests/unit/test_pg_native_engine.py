"""The native relay's engine (``_relay.Engine``) driven through loopback sockets, without
PostgreSQL: how it behaves when one side misbehaves at the socket level (a reset while the other
side does not read, a hang-up while the gate is closed).

The engine's thread must not spin on a connection it is not reading: epoll reports an error or a
hang-up whatever the mask, and level-triggered, on every turn. The check is the process's CPU
time over a quiet half second (a spinning thread burns the whole half second), not a timing of
the relay.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from jitvault.proxy.recording import RecordingUnavailable
from jitvault_postgres import native
from jitvault_postgres import protocol as pg

try:
    from jitvault_postgres import _relay
except ImportError:  # test_pg_native_framer fails on a missing build
    _relay = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(_relay is None, reason="the native relay is not built")

#: CPU seconds the whole process may use while it should be idle for QUIET seconds
QUIET = 0.5
IDLE_CPU = 0.2
ROW = 64 * 1024


def now_us() -> int:
    """The monotonic clock in microseconds, the engine's own unit for a read's mark."""
    return time.monotonic_ns() // 1000


def _pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair (accepted side, connecting side)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        near = socket.create_connection(listener.getsockname())
        far, _ = listener.accept()
    return far, near


def _data_row(size: int) -> bytes:
    """A server message (DataRow-shaped) the server framer passes whole."""
    body = struct.pack("!hi", 1, size - 6) + b"x" * (size - 6)
    return b"D" + struct.pack("!i", len(body) + 4) + body


class Harness:
    """An engine relaying one session: ``client`` is the user's end, ``backend`` the target's."""

    def __init__(self) -> None:
        assert _relay is not None
        self.engine = _relay.Engine()
        proxy_client, self.client = _pair()
        self.backend, proxy_server = _pair()
        self.engine.add(1, proxy_client.detach(), proxy_server.detach(), b"", b"")
        self.events: list[tuple[object, ...]] = []

    def take(self, until: str, timeout: float = 5.0) -> list[tuple[object, ...]]:
        """Engine events until one of kind ``until`` arrives (bounded in time)."""
        deadline = time.monotonic() + timeout
        while not any(event[0] == until for event in self.events):
            left = deadline - time.monotonic()
            kinds = [event[0] for event in self.events]
            assert left > 0, f"no {until!r} event from the engine, only {kinds}"
            select.select([self.engine.fileno()], [], [], left)
            self.events += self.engine.take()
        return self.events

    def end_reason(self) -> str:
        """Why the engine stopped the session by itself (its first ``e`` event)."""
        ended = next(event for event in self.take("e") if event[0] == "e")
        return native.END_REASONS[int(ended[2])]  # type: ignore[call-overload]

    def close(self) -> None:
        self.engine.stop()
        self.client.close()
        self.backend.close()


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


def _unmarked(events: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """The engine's events without the ``{"ago":us}`` marks that lead each client read's
    statements (test_a_read_is_handed_over_with_how_long_ago_it_was_read checks them)."""
    return [
        (*event[:3], re.sub(rb'\{"ago":\d+\},', b"", event[3]))  # type: ignore[arg-type]
        if event[0] == "q"
        else event
        for event in events
    ]


def _rendered(*texts: str) -> bytes:
    """Simple-query statements as the engine hands them over (test_pg_native_json checks the
    rendering itself)."""
    return b",".join(b'{"kind":"simple","text":"%s"}' % text.encode() for text in texts)


def _reset(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as a crashed peer or a middlebox does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _cpu_while_quiet() -> float:
    start = time.process_time()
    time.sleep(QUIET)
    return time.process_time() - start


def _fill_client(h: Harness) -> None:
    """The backend sends more than the client's socket buffers hold; the client reads nothing,
    so the engine holds the rest and stops reading the backend."""
    assert _send_until_blocked(h.backend, _data_row(ROW)), "the backend's data never backed up"


def _send_until_blocked(sock: socket.socket, message: bytes) -> bool:
    """Send whole copies of ``message`` until the peer's side backs up (at most 25 MiB, and
    never a partial message left unsent: the stream stays well-formed)."""
    sock.setblocking(False)
    stream = message * (25 * 1024 * 1024 // len(message))
    sent = 0
    for _ in range(1000):  # bounded in count
        try:
            sent += sock.send(stream[sent:])
        except BlockingIOError:
            if sent > 4 * 1024 * 1024:
                break
            time.sleep(0.01)
    return sent > 4 * 1024 * 1024


def test_backend_reset_while_client_does_not_read(harness: Harness) -> None:
    _fill_client(harness)
    time.sleep(0.1)
    _reset(harness.backend)
    assert _cpu_while_quiet() < IDLE_CPU
    # the session ended as an upstream loss; closing it (as the front end does) hands the
    # client what the engine still held, then EOF
    assert harness.end_reason() == "upstream connection lost"
    harness.engine.close(1, b"", b"", 5.0)
    harness.client.settimeout(5)
    got = 0
    for _ in range(10_000):  # bounded: the backend sent at most 25 MiB
        chunk = harness.client.recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
    # what the proxy had read is delivered, in whole messages (the reset drops the rest)
    assert got > 0
    assert got % len(_data_row(ROW)) == 0
    harness.client.close()
    harness.take("c")


def test_gated_client_hangs_up_while_output_pending(harness: Harness) -> None:
    harness.engine.set_gate(False)
    _fill_client(harness)
    time.sleep(0.1)
    _reset(harness.client)
    assert _cpu_while_quiet() < IDLE_CPU
    assert harness.end_reason() == "client connection lost"


def test_client_reset_while_backend_output_pending(harness: Harness) -> None:
    """The mirror image: the client sends while the backend does not read, then resets."""
    query = b"Q" + struct.pack("!i", 4 + ROW + 1) + b"s" * ROW + b"\0"
    assert _send_until_blocked(harness.client, query), "the client's data never backed up"
    time.sleep(0.1)
    _reset(harness.client)
    assert _cpu_while_quiet() < IDLE_CPU
    assert harness.end_reason() == "client connection lost"


def test_engine_refuses_a_second_init() -> None:
    assert _relay is not None
    engine = _relay.Engine()
    try:
        with pytest.raises(RuntimeError, match="initialised already"):
            engine.__init__()  # type: ignore[misc]
    finally:
        engine.stop()


class _Ignored:
    def native_unrecorded(self, exc: Exception) -> None: ...

    def native_ended(self, reason: str, violation: object) -> None: ...

    def native_closed(self) -> None: ...


def test_a_refused_hand_over_closes_both_sockets() -> None:
    """A session handed over while the engine stops (shutdown) must not leave its two
    sockets open with nobody reading them: both peers see the connection end."""
    loop = asyncio.new_event_loop()
    try:
        relays = native.NativeRelays(loop)
        relays.shutdown()
        proxy_client, client = _pair()
        backend, proxy_server = _pair()
        with pytest.raises(RuntimeError, match="stopped"):
            relays.add(
                1,
                _Ignored(),  # type: ignore[arg-type]
                (proxy_client.detach(), proxy_server.detach()),
                (b"", b""),
                None,  # type: ignore[arg-type]
            )
        for peer in (client, backend):
            peer.settimeout(5)
            assert peer.recv(1) == b""
            peer.close()
    finally:
        loop.close()


class _Taken:
    """An engine stand-in whose take() gives these events once (its eventfd: a pipe that
    never becomes readable, closed by stop())."""

    def __init__(self, events: list[tuple[Any, ...]]) -> None:
        self.events = events
        self.added: list[int] = []
        self._pipe = os.pipe()

    def fileno(self) -> int:
        return self._pipe[0]

    def add(self, sid: int, client_fd: int, server_fd: int, *early: bytes) -> None:
        self.added.append(sid)

    def close(self, sid: int, last: bytes, terminate: bytes, linger: float) -> None: ...

    def take(self) -> list[tuple[Any, ...]]:
        events, self.events = self.events, []
        return events

    def set_gate(self, open_: bool) -> None: ...

    def stop(self) -> None:
        for fd in self._pipe:
            os.close(fd)


class _Recorded:
    """A ProxyContext stand-in for the hand-over: what was given to the core."""

    def __init__(self, refuse: bool = False) -> None:
        self.batches: list[list[tuple[int, int, bytes]]] = []
        self.refuse = refuse

    def record_forwarded(self, batch: list[tuple[int, int, bytes]]) -> None:
        self.batches.append(list(batch))
        if self.refuse:
            raise RecordingUnavailable("the recording queue is full")

    def recording_available(self) -> bool:
        return True

    def recording_backlog(self) -> None:
        return None


class _Ending:
    """A session whose end handling fails, and that notes a refused recording."""

    def __init__(self) -> None:
        self.unrecorded: list[str] = []

    def native_unrecorded(self, exc: Exception) -> None:
        self.unrecorded.append(str(exc))

    def native_ended(self, reason: str, violation: object) -> None:
        raise RuntimeError("the end's handling failed")

    def native_closed(self) -> None: ...


def test_a_hand_over_records_every_sessions_statements_in_one_call_whatever_an_end_does() -> None:
    """The statements of a take reach the core in one call, for every session, even when the
    handling of a session's end in the same take fails; a refusal reaches every session of
    the batch."""
    loop = asyncio.new_event_loop()
    try:
        for refuse in (False, True):
            engine = _Taken(
                [("q", 1, 2, b"a"), ("q", 2, 1, b"b"), ("e", 1, 1, 0, 0, 0), ("q", 9, 1, b"x")]
            )
            relays = native.NativeRelays(loop, engine)
            first, second, ctx = _Ending(), _Ending(), _Recorded(refuse)
            for sid, session in ((1, first), (2, second)):
                relays.add(sid, session, (-1, -1), (b"", b""), ctx)  # type: ignore[arg-type]
            assert engine.added == [1, 2]
            with pytest.raises(RuntimeError, match="end's handling failed"):
                relays.drain()
            assert ctx.batches == [[(1, 2, b"a"), (2, 1, b"b")]]  # 9: no such session
            expected = ["the recording queue is full"] if refuse else []
            assert (first.unrecorded, second.unrecorded) == (expected, expected)
            relays.shutdown()  # the stand-in's pipe is closed
    finally:
        loop.close()


def test_interleaved_sessions_hand_over_one_item_each_in_order() -> None:
    """Statements of sessions that take turns come out as one item per session (one recorder
    call each, not one per statement), each session's in the order it sent them."""
    assert _relay is not None
    engine = _relay.Engine()
    ends: list[socket.socket] = []
    try:
        clients = []
        for sid in (1, 2):
            proxy_client, client = _pair()
            backend, proxy_server = _pair()
            engine.add(sid, proxy_client.detach(), proxy_server.detach(), b"", b"")
            clients.append(client)
            ends += [client, backend]
        for n in range(3):
            for sid, client in enumerate(clients, 1):
                client.sendall(pg.query(f"SELECT {sid}{n} ;"))
                time.sleep(0.01)  # read one by one, in this order
        events: list[tuple[object, ...]] = []
        deadline = time.monotonic() + 5
        while sum(int(event[2]) for event in events if event[0] == "q") < 6:  # type: ignore[call-overload]
            assert time.monotonic() < deadline, "the statements never came out"
            if not events:
                time.sleep(0.05)  # all six queued before the first take
            select.select([engine.fileno()], [], [], 0.5)
            events += engine.take()
        assert _unmarked(events[:2]) == [
            ("q", 1, 3, _rendered(*(f"SELECT 1{n} ;" for n in range(3)))),
            ("q", 2, 3, _rendered(*(f"SELECT 2{n} ;" for n in range(3)))),
        ]
    finally:
        engine.stop()
        for end in ends:
            end.close()


def test_many_sessions_hand_over_one_item_each_and_an_end_closes_a_sessions_item() -> None:
    """Forty sessions (ids far apart, so that the take's table of sessions probes past
    collisions) take turns: one item each, its statements in the order sent, the "ago" marks
    well formed; a session that ends has its item before its end."""
    assert _relay is not None
    engine = _relay.Engine()
    ends: list[socket.socket] = []
    sids = [(1 << 40) + 4096 * i for i in range(40)]
    try:
        clients = {}
        for sid in sids:
            proxy_client, client = _pair()
            backend, proxy_server = _pair()
            engine.add(sid, proxy_client.detach(), proxy_server.detach(), b"", b"")
            clients[sid] = client
            ends += [client, backend]
        for n in range(2):
            for sid, client in clients.items():
                client.sendall(pg.query(f"SELECT {sid}, {n} ;"))
        closed = sids[::7]
        time.sleep(0.2)  # all read (and queued) before the ends and the first take
        for sid in closed:
            clients[sid].close()
        events: list[tuple[object, ...]] = []
        deadline = time.monotonic() + 10
        while (
            sum(int(event[2]) for event in events if event[0] == "q") < 2 * len(sids)  # type: ignore[call-overload]
            or sum(event[0] == "e" for event in events) < len(closed)
        ):
            assert time.monotonic() < deadline, "the statements never came out"
            select.select([engine.fileno()], [], [], 0.5)
            events += engine.take()
        items = [event for event in events if event[0] == "q"]
        assert sorted(int(event[1]) for event in items) == sids  # type: ignore[call-overload]
        for event in items:
            assert re.fullmatch(
                rb'\{"ago":\d+\},\{[^{}]*\}(,\{"ago":\d+\},\{[^{}]*\}|,\{[^{}]*\})*',
                event[3],  # type: ignore[arg-type]
            ), event
        assert _unmarked(items) == [
            ("q", sid, 2, _rendered(*(f"SELECT {sid}, {n} ;" for n in range(2))))
            for sid in [int(event[1]) for event in items]  # type: ignore[call-overload]
        ]
        for sid in closed:
            order = [event[0] for event in events if event[1] == sid]
            assert order == ["q", "e"]
    finally:
        engine.stop()
        for end in ends:
            end.close()


def test_statements_come_out_after_the_delay_without_more_traffic(harness: Harness) -> None:
    """A statement is handed over by the engine's timer alone (no batch filled, no session
    ended): the engine's descriptor turns readable, every time, and the timer does not keep
    the thread busy once it has fired."""
    engine = harness.engine
    for n in range(3):
        harness.client.sendall(pg.query(f"SELECT {n} ;"))
        assert harness.backend.recv(100) == pg.query(f"SELECT {n} ;")
        readable, _, _ = select.select([engine.fileno()], [], [], 5.0)
        assert readable, f"statement {n} was never handed over"
        assert _unmarked(engine.take()) == [("q", 1, 1, _rendered(f"SELECT {n} ;"))]
    assert _cpu_while_quiet() < IDLE_CPU


def test_a_big_statement_is_handed_over_whole(harness: Harness) -> None:
    """A statement far above the read size (several reads, its JSON several times the first
    buffer) comes out whole, its non-ASCII text escaped."""
    text = "SELECT '" + "é" * 150_000 + "x" * 100_000 + "' ;"
    message = pg.query(text)
    harness.client.sendall(message)
    got = b""
    while len(got) < len(message):  # bounded: the message's length
        chunk = harness.backend.recv(1 << 20)
        assert chunk, "the backend's side closed"
        got += chunk
    assert got == message
    (item,) = [event for event in _unmarked(harness.take("q")) if event[0] == "q"]
    assert item[:3] == ("q", 1, 1)
    assert json.loads(item[3]) == {"kind": "simple", "text": text}  # type: ignore[arg-type]


def test_a_read_is_handed_over_with_how_long_ago_it_was_read(harness: Harness) -> None:
    """Python takes late (here: two client reads 0.3 s apart, then 0.2 s more): the one item
    leads each read's statements with ``{"ago": microseconds}`` (not counted), so that each
    statement is read back at its own time rather than the take's; a duration needs no mark.
    Each read's time (the take's less its mark, on the same monotonic clock) lies between its
    send and the backend's receipt of what was read (the engine queues before it forwards)."""

    def send_and_receive(message: bytes) -> tuple[int, int]:
        sent = now_us()
        harness.client.sendall(message)
        assert _recv_exactly(harness.backend, len(message)) == message
        return sent, now_us()

    reads = [send_and_receive(pg.query("SELECT 1") + pg.query("SELECT 2"))]
    time.sleep(0.3)
    reads.append(send_and_receive(pg.query("SELECT 3")))
    time.sleep(0.2)
    harness.backend.sendall(pg.ready_for_query())
    assert _recv_exactly(harness.client, 6) == pg.ready_for_query()
    before = now_us()
    (item,) = harness.engine.take()
    after = now_us()
    assert item[:3] == ("q", 1, 4)
    found = json.loads(b"[" + item[3] + b"]")  # type: ignore[operator]
    keys = [["ago"], ["kind", "text"], ["kind", "text"], ["ago"], ["kind", "text"], ["done"]]
    assert [list(each) for each in found] == keys
    slack = 2  # microseconds: the two clocks' roundings
    for (sent, received), mark in zip(reads, (found[0], found[3]), strict=True):
        ago = mark["ago"]
        assert after - ago >= sent - slack, (reads, found)
        assert before - ago <= received + slack, (reads, found)
    assert found[0]["ago"] - found[3]["ago"] >= 300_000 - slack


def test_reads_and_answers_between_two_takes_are_one_item_in_their_order(
    harness: Harness,
) -> None:
    """Twenty queries, each answered before the next is sent, all before Python takes: one
    item for the session, in the order things happened: each read's mark, its statement, its
    duration; marks no later than the one before."""

    first_sent = now_us()
    for i in range(20):
        message = pg.query(f"SELECT {i}")
        harness.client.sendall(message)
        assert _recv_exactly(harness.backend, len(message)) == message
        harness.backend.sendall(pg.ready_for_query())
        assert _recv_exactly(harness.client, 6) == pg.ready_for_query()
    before = now_us()
    (item,) = harness.engine.take()
    assert item[:3] == ("q", 1, 40)
    found = json.loads(b"[" + item[3] + b"]")  # type: ignore[operator]
    assert [list(each) for each in found] == [["ago"], ["kind", "text"], ["done"]] * 20
    assert [each["text"] for each in found[1::3]] == [f"SELECT {i}" for i in range(20)]
    assert all(each["done"][0] == 1 for each in found[2::3])
    agos = [each["ago"] for each in found[0::3]]
    assert agos == sorted(agos, reverse=True), agos
    assert before - agos[0] >= first_sent - 2, (first_sent, before, agos)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    got = b""
    while len(got) < size:  # bounded: the size expected
        chunk = sock.recv(size - len(got))
        assert chunk, "the other side closed"
        got += chunk
    return got


def _handed_over(h: Harness, objects: int, timeout: float = 5.0) -> list[dict[str, object]]:
    """The session's recording objects (statements and durations) once ``objects`` came."""
    deadline = time.monotonic() + timeout
    found: list[dict[str, object]] = []
    while len(found) < objects:
        left = deadline - time.monotonic()
        assert left > 0, f"only {found} handed over"
        select.select([h.engine.fileno()], [], [], left)
        for event in h.engine.take():
            if event[0] == "q":
                item = json.loads(b"[" + event[3] + b"]")  # type: ignore[operator]
                found += [each for each in item if "ago" not in each]
    return found


def test_each_cycle_answered_hands_over_how_long_its_statements_ran(harness: Harness) -> None:
    """A Query, then an extended-protocol statement up to its Sync, then a Sync alone (a
    prepared statement run again: no statement of its own); the server answers each after a
    pause. The durations come out in order, after their statements, one per cycle that had
    statements, and each at least as long as the server took."""
    body = b"\0SELECT 2\0\0\0"
    parse = b"P" + struct.pack("!i", len(body) + 4) + body
    sent = pg.query("SELECT 1") + parse + pg.sync() + pg.sync()
    harness.client.sendall(sent)
    assert _recv_exactly(harness.backend, len(sent)) == sent
    found = _handed_over(harness, 2)  # taken: the durations come as events of their own
    for _ in range(3):
        time.sleep(0.05)
        harness.backend.sendall(pg.ready_for_query())
    assert _recv_exactly(harness.client, 18) == pg.ready_for_query() * 3
    found += _handed_over(harness, 2)
    assert found[:2] == [
        {"kind": "simple", "text": "SELECT 1"},
        {"kind": "extended", "text": "SELECT 2"},
    ]
    done: list[list[int]] = [each["done"] for each in found[2:]]  # type: ignore[misc]
    assert [statements for statements, _ in done] == [1, 1]  # the lone Sync has none
    assert done[0][1] >= 50_000
    assert done[1][1] >= 100_000


def test_a_named_statement_is_handed_over_with_its_name_and_each_run_by_name(
    harness: Harness,
) -> None:
    """A Parse of a named statement (its name beside its text) and one of the unnamed
    statement, then two Binds of the named one, each run in a cycle of its own, and two Binds of
    the unnamed one after its Parse's cycle ended: its Parse was a preparation, so each is a
    run, by its empty name. The Bind's value is never handed over; each run gets its cycle's
    duration."""
    secret = b"hunter2-in-a-bind"

    def parse(statement: bytes, text: bytes) -> bytes:
        body = statement + b"\0" + text + b"\0\0\0"
        return b"P" + struct.pack("!i", len(body) + 4) + body

    def bind(statement: bytes) -> bytes:
        params = b"\0\0\0\x01" + struct.pack("!i", len(secret)) + secret + b"\0\0"
        raw = b"\0" + statement + b"\0" + params
        return b"B" + struct.pack("!i", len(raw) + 4) + raw

    sent = b"".join(
        [
            parse(b's"1', b"SELECT $1"),
            parse(b"", b"SELECT 2"),
            pg.sync(),
            bind(b's"1'),
            pg.sync(),
            bind(b's"1'),
            bind(b""),
            pg.sync(),
            bind(b""),
            pg.sync(),
        ]
    )
    harness.client.sendall(sent)
    assert _recv_exactly(harness.backend, len(sent)) == sent
    harness.backend.sendall(pg.ready_for_query() * 4)
    found = _handed_over(harness, 6 + 4)
    assert [each for each in found if "done" not in each] == [
        {"kind": "extended", "name": 's"1', "text": "SELECT $1"},
        {"kind": "extended", "text": "SELECT 2"},
        {"kind": "execute", "name": 's"1'},
        {"kind": "execute", "name": 's"1'},
        {"kind": "execute", "name": ""},
        {"kind": "execute", "name": ""},
    ]
    assert [each["done"][0] for each in found if "done" in each] == [2, 1, 2, 1]
    assert secret.decode() not in json.dumps(found)


def test_cycles_pipelined_past_the_bound_join_the_newest(harness: Harness) -> None:
    """40 queries sent at once, answered at once: the engine keeps 32 cycles apart and joins
    the rest to the newest, so every statement still gets a duration, in order (as
    protocol.StatementCycles does). Answers that come before Python takes the statements are
    added to their event (the first test covers the other way)."""
    sent = b"".join(pg.query(f"SELECT {n}") for n in range(40))
    harness.client.sendall(sent)
    assert _recv_exactly(harness.backend, len(sent)) == sent
    harness.backend.sendall(pg.ready_for_query() * 40)
    found = _handed_over(harness, 40 + 32)
    done = [each["done"][0] for each in found if "done" in each]  # type: ignore[index]
    assert done == [1] * 31 + [9]
    assert [each["text"] for each in found if "text" in each] == [f"SELECT {n}" for n in range(40)]


def test_a_big_statement_answered_before_it_is_taken_gets_its_duration_in_its_event(
    harness: Harness,
) -> None:
    """A big statement's event is trimmed to its size when queued; its duration, answered
    before Python takes it, is added to that event (growing it), and both come out whole."""
    text = "SELECT '" + "é" * 50_000 + "' ;"
    message = pg.query(text)
    harness.client.sendall(message)
    assert _recv_exactly(harness.backend, len(message)) == message
    harness.backend.sendall(pg.ready_for_query())
    assert _recv_exactly(harness.client, 6) == pg.ready_for_query()
    found = _handed_over(harness, 2)
    assert found[0] == {"kind": "simple", "text": text}
    assert found[1]["done"][0] == 1  # type: ignore[index]

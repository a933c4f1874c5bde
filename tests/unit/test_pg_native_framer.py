"""The native relay's framing held against the Python relay's, byte for byte, however the
stream is cut: the client side (``_relay.ClientFramer`` against
:class:`jitvault_postgres.protocol.FrontendRelay`: the same bytes forwarded, the same statement
texts surfaced, the same violation) and the server side (``_relay.ServerFramer`` against
:class:`jitvault_postgres.frontend.BackendFramer`: the same bytes forwarded after every read, the
same boundary state, the same violation).

No sockets: both are sans-IO. The native module must be built here (Linux, with a compiler):
CI fails rather than skipping the relay that serves plain-TCP sessions.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitvault_postgres import native
from jitvault_postgres import protocol as pg
from jitvault_postgres.frontend import BackendFramer

try:
    from jitvault_postgres import _relay
except ImportError:  # the first test says so
    _relay = None  # type: ignore[assignment]

Outcome = tuple[bytes, list[tuple[bytes, bytes]], str | None]


def _typed(message_type: bytes, body: bytes) -> bytes:
    return message_type + struct.pack("!i", len(body) + 4) + body


def _python(stream: bytes, cuts: Sequence[int]) -> Outcome:
    relay = pg.FrontendRelay()
    forwarded, surfaced, pos = bytearray(), list[tuple[bytes, bytes, bytes]](), 0
    for end in [*sorted(set(cuts)), len(stream)]:
        if end <= pos:
            continue
        try:
            out, messages = relay.feed(stream[pos:end])
        except pg.ProtocolViolation as exc:
            return bytes(forwarded), surfaced, exc.message
        forwarded += out
        surfaced += messages
        pos = end
    return bytes(forwarded), surfaced, None


def _native(stream: bytes, cuts: Sequence[int]) -> Outcome:
    assert _relay is not None
    framer = _relay.ClientFramer()
    forwarded, surfaced, pos = bytearray(), list[tuple[bytes, bytes, bytes]](), 0
    for end in [*sorted(set(cuts)), len(stream)]:
        if end <= pos:
            continue
        out, messages, violation, message_type, length = framer.feed(stream[pos:end])
        if violation:
            assert (out, messages) == (b"", [])  # nothing of a failed feed goes on
            return (
                bytes(forwarded),
                surfaced,
                native.client_violation(violation, message_type, length).message,
            )
        forwarded += out
        surfaced += messages
        pos = end
    return bytes(forwarded), surfaced, None


def test_the_native_relay_is_built() -> None:
    assert _relay is not None, "jitvault_postgres._relay is not built: pip install -e . again"
    assert native.available()


_VALID = [
    pg.query("SELECT 1"),
    _typed(b"P", b"s1\0SELECT $1::text\0\0\x01\0\0\0\x19"),
    _typed(b"P", b"\0SELECT $1::int\0\0\0"),  # the unnamed statement: its runs
    _typed(b"D", b"S\0"),
    _typed(b"B", b"\0\0\0\0\0\x01\0\0\0\x07hunter2\0\0"),
    _typed(b"B", b"\0s1\0\0\0\0\x01\0\0\0\x07hunter2\0\0"),
    _typed(b"B", b"p" * 600 + b"\0" + b"s" * 422 + b"\0" + b"v" * 9000),
    _typed(b"B", b'portal\0\xe2\x82 "stmt"\0' + b"\0" * 4000),
    _typed(b"E", b"\0\0\0\0\0"),
    pg.sync(),
    _typed(b"F", b"\0\0\x04\xd2" + b"\0" * 6 + b"f" * 9000),
    _typed(b"d", b"x" * 9000),
    _typed(b"c", b""),
    pg.query("SELECT '" + "y" * 5000 + "'"),
    _typed(b"Q", "SELECT 'café' -- \u2603".encode()),
]
_MALFORMED = [
    pg.terminate() + pg.query("SELECT 1"),
    b"Z" + struct.pack("!i", 4),
    b"Q" + struct.pack("!i", 3),
    b"d" + struct.pack("!i", 2**31 - 1),
    b"Q" + struct.pack("!i", -5),
    _typed(b"Q", b"SELECT 1"),
    _typed(b"Q", b"SELECT 1\0\0"),
    _typed(b"P", b"s1"),
    _typed(b"P", b"s1\0SELECT $1"),
    _typed(b"P", b"s1\0SELECT $1\0"),
    _typed(b"P", b"s1\0SELECT $1\0\xff\xff"),
    _typed(b"P", b"s1\0SELECT $1\0\0\x01\0\0\0"),
    _typed(b"P", b"s1\0SELECT $1\0\0\x00\0"),
    _typed(b"X", b"\0"),
    _typed(b"B", b""),
    _typed(b"B", b"portal"),
    _typed(b"B", b"portal\0stmt"),
    _typed(b"B", b"p" * 600 + b"\0" + b"s" * 423 + b"\0" + b"v" * 9000),
    _typed(b"B", b"p" * 2000),
]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.sampled_from(_VALID),
            st.sampled_from(_MALFORMED),
            st.binary(max_size=12),
            st.builds(
                _typed,
                st.sampled_from([b"Q", b"P", b"X", b"d", b"B", b"S", b"F", b"\x00", b"\xff"]),
                st.binary(max_size=24),
            ),
        ),
        max_size=12,
    ),
    st.booleans(),
    st.lists(st.integers(min_value=0, max_value=30_000), max_size=30),
)
def test_the_native_framing_matches_the_python_relay_however_the_stream_is_cut(
    parts: list[bytes], terminate: bool, cuts: list[int]
) -> None:
    assert _relay is not None
    stream = b"".join(parts) + (pg.terminate() if terminate else b"")
    assert _native(stream, cuts) == _python(stream, cuts)


def test_the_native_framing_refuses_everything_after_a_violation() -> None:
    assert _relay is not None
    framer = _relay.ClientFramer()
    assert framer.feed(b"Z" + struct.pack("!i", 4))[2] != 0
    out, messages, violation, _, _ = framer.feed(pg.query("SELECT 1"))
    assert (out, messages) == (b"", [])
    assert violation != 0


# -- the server side --------------------------------------------------------------------------

#: per read: what was forwarded, at a boundary, ReadyForQuery messages in it; then violated
ServerOutcome = tuple[list[tuple[bytes, bool, int]], bool]
#: larger than the hold limit (1 MiB): streamed through, not held
_HUGE = _typed(b"D", b"h" * ((1 << 20) + 10))


#: the backend's process id in the notifications below, and the one its client was given
_REAL_PID, _GIVEN_PID = 1, 0x12345


def _server_python(stream: bytes, cuts: Sequence[int]) -> ServerOutcome:
    framer = BackendFramer()
    framer.notify_pid(_REAL_PID, _GIVEN_PID)
    reads, pos = list[tuple[bytes, bool, int]](), 0
    for end in [*sorted(set(cuts)), len(stream)]:
        if end <= pos:
            continue
        try:
            out = framer.feed(stream[pos:end])
        except pg.ProtocolViolation:
            return reads, True
        reads.append((out, framer.at_boundary, framer.readies))
        framer.readies = 0
        pos = end
    return reads, False


def _server_native(stream: bytes, cuts: Sequence[int]) -> ServerOutcome:
    assert _relay is not None
    framer = _relay.ServerFramer()
    framer.notify_pid(_REAL_PID, _GIVEN_PID)
    reads, pos = list[tuple[bytes, bool, int]](), 0
    for end in [*sorted(set(cuts)), len(stream)]:
        if end <= pos:
            continue
        out, violation, at_boundary, readies = framer.feed(stream[pos:end])
        if violation:
            assert out == b""  # nothing of a failed read goes on
            return reads, True
        reads.append((out, at_boundary, readies))
        pos = end
    return reads, False


_SERVER_VALID = [
    _typed(b"R", b"\0\0\0\0"),
    _typed(b"S", b"server_version\x0015.4\0"),
    _typed(b"K", b"\0\0\x12\x34\0\0\x56\x78"),
    _typed(b"Z", b"I"),
    _typed(b"T", b"\0\x01a\0" + b"\0" * 18),
    _typed(b"D", b"\0\x01\0\0\0\x05hello"),
    _typed(b"D", b"z" * 70_000),
    _typed(b"C", b"SELECT 1\0"),
    _typed(b"E", b"SFATAL\0C57P01\0Mterminating\0\0"),
    _typed(b"A", b"\0\0\0\x01chan\0payload\0"),  # the session's own backend
    _typed(b"A", b"\0\0\0\x02chan\0payload\0"),  # another one
    _typed(b"A", b"\0\0\0\x01"),  # no channel: the pid is still mapped (the client judges it)
    _typed(b"A", b"\0\0\x01"),  # too short to name a backend
    _HUGE,
]
_SERVER_MALFORMED = [
    b"D" + struct.pack("!i", 3),
    b"D" + struct.pack("!i", -1),
    b"E" + struct.pack("!i", 0),
]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.sampled_from(_SERVER_VALID),
            st.sampled_from(_SERVER_MALFORMED),
            st.binary(max_size=12),
            st.builds(_typed, st.sampled_from([b"D", b"Z", b"\x00"]), st.binary(max_size=24)),
        ),
        max_size=10,
    ),
    st.lists(st.integers(min_value=0, max_value=(1 << 20) + 200_000), max_size=30),
)
def test_the_native_server_framing_matches_the_python_relay_however_the_stream_is_cut(
    parts: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(parts)
    assert _server_native(stream, cuts) == _server_python(stream, cuts)


def test_both_framings_show_the_sessions_own_notifications_from_the_pid_its_client_was_given() -> (
    None
):
    own = _typed(b"A", struct.pack("!i", 4242) + b"chan\0hi\0")
    other = _typed(b"A", struct.pack("!i", 777) + b"chan\0hi\0")
    shown = _typed(b"A", struct.pack("!i", 99) + b"chan\0hi\0")
    ready = _typed(b"Z", b"I")
    assert _relay is not None
    for framer in (BackendFramer(), _relay.ServerFramer()):
        stream = ready + own + other
        first = framer.feed(stream)
        assert (first if isinstance(first, bytes) else first[0]) == stream  # not asked yet
        framer.notify_pid(4242, 99)
        sent = ready + own[:7]
        out = framer.feed(sent)
        assert (out if isinstance(out, bytes) else out[0]) == ready
        rest = own[7:] + other + own
        out = framer.feed(rest)
        assert (out if isinstance(out, bytes) else out[0]) == shown + other + shown
    # the native framer changes a copy: the caller's buffer stays as it was
    native = _relay.ServerFramer()
    native.notify_pid(4242, 99)
    read = bytearray(own)
    assert native.feed(read)[0] == shown
    assert read == own


def test_the_native_server_framing_streams_a_huge_message_and_holds_a_partial_one() -> None:
    """The two properties the cut relies on, pinned by hand: a partial message is held (the
    client's stream stays at a boundary), a message over the hold limit is streamed (not at a
    boundary until it ends), and everything after a violation is refused."""
    assert _relay is not None
    framer = _relay.ServerFramer()
    ready = _typed(b"Z", b"I")
    assert framer.feed(ready + _SERVER_VALID[5][:7]) == (ready, 0, True, 1)
    assert framer.feed(_SERVER_VALID[5][7:]) == (_SERVER_VALID[5], 0, True, 0)
    head = _HUGE[: (1 << 20) + 5]
    assert framer.feed(head) == (head, 0, False, 0)
    assert framer.feed(_HUGE[len(head) :] + ready) == (_HUGE[len(head) :] + ready, 0, True, 1)
    assert framer.feed(b"D" + struct.pack("!i", 2) + ready)[:2] == (b"", 1)
    assert framer.feed(ready)[:2] == (b"", 1)

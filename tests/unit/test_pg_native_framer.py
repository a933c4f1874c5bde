"""The native relay's client framing (``_relay.ClientFramer``) held against the Python relay's
(:class:`jitvault_postgres.protocol.FrontendRelay`), byte for byte: the same bytes forwarded,
the same statement texts surfaced, the same violation, however the stream is cut.

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

try:
    from jitvault_postgres import _relay
except ImportError:  # the first test says so
    _relay = None  # type: ignore[assignment]

Outcome = tuple[bytes, list[tuple[bytes, bytes]], str | None]


def _typed(message_type: bytes, body: bytes) -> bytes:
    return message_type + struct.pack("!i", len(body) + 4) + body


def _python(stream: bytes, cuts: Sequence[int]) -> Outcome:
    relay = pg.FrontendRelay()
    forwarded, surfaced, pos = bytearray(), list[tuple[bytes, bytes]](), 0
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
    forwarded, surfaced, pos = bytearray(), list[tuple[bytes, bytes]](), 0
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
    _typed(b"B", b"\0\0\0\0\0\x01\0\0\0\x07hunter2\0\0"),
    _typed(b"E", b"\0\0\0\0\0"),
    pg.sync(),
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
                st.sampled_from([b"Q", b"P", b"X", b"d", b"B", b"\x00", b"\xff"]),
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

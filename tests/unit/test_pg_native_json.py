"""The native relay renders each statement's recording entry in C (``_statements.h``): it must
be, byte for byte, what Python's json makes of the text decoded with ``"replace"``, for any
bytes a client may send: a difference would store a different text than the one that ran, or
JSON that breaks out of its string."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

try:
    from jitvault_postgres import _relay
except ImportError:  # test_pg_native_framer fails on a missing build
    _relay = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(_relay is None, reason="the native relay is not built")


def _python(simple: bool, text: bytes) -> bytes:
    data = {"kind": "simple" if simple else "extended", "text": text.decode("utf-8", "replace")}
    return json.dumps(data, ensure_ascii=True, sort_keys=True, separators=(",", ":")).encode()


#: ill-formed and edge UTF-8: truncated sequences, overlongs, surrogates, above U+10FFFF,
#: lone continuation bytes, controls, DEL, quotes and backslashes
EDGES = [
    b"",
    b'"',
    b"\\",
    b"\x00\x01\x1f\x7f",
    b"\x08\x0c\n\r\t",
    b"\xc0\x80",
    b"\xc1\xbf",
    b"\xc2",
    b"\xe0\x80\x80",
    b"\xe0\xa0",
    b"\xed\xa0\x80",
    b"\xed\x9f\xbf",
    b"\xef\xbf\xbf",
    b"\xf0\x80\x80\x80",
    b"\xf0\x90\x80",
    b"\xf4\x8f\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf5\x80\x80\x80",
    b"\xff\xfe",
    b"\x80\xbf",
    "é€😀'; DROP TABLE x; --".encode(),
]


@pytest.mark.parametrize("text", EDGES)
def test_edges_render_as_python_renders_them(text: bytes) -> None:
    for simple in (True, False):
        assert _relay.statement_json(simple, text) == _python(simple, text)


@settings(max_examples=3000, deadline=None)
@given(st.booleans(), st.binary(max_size=64))
@example(True, b"\xe2\x82")
def test_any_bytes_render_as_python_renders_them(simple: bool, text: bytes) -> None:
    assert _relay.statement_json(simple, text) == _python(simple, text)


@settings(max_examples=1000, deadline=None)
@given(st.booleans(), st.text(max_size=32))
def test_any_text_round_trips(simple: bool, text: str) -> None:
    raw = text.encode("utf-8", "surrogatepass")
    rendered = _relay.statement_json(simple, raw)
    assert rendered.isascii()
    assert json.loads(rendered)["text"] == raw.decode("utf-8", "replace")


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(EDGES) | st.binary(max_size=8), max_size=20))
def test_mixed_runs_render_as_python_renders_them(parts: list[bytes]) -> None:
    text = b"".join(parts)
    assert _relay.statement_json(True, text) == _python(True, text)

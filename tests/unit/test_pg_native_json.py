"""The native relay renders each statement's recording entry in C (``_statements.h``): it must
be, byte for byte, what Python's json makes of the text (and a prepared statement's name)
decoded with ``"replace"``, for any bytes a client may send: a difference would store a
different text than the one that ran, or JSON that breaks out of its string."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from jitvault.plugin_api import render_statement

try:
    from jitvault_postgres import _relay
except ImportError:  # test_pg_native_framer fails on a missing build
    _relay = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(_relay is None, reason="the native relay is not built")


def _python(simple: bool, text: bytes) -> bytes:
    data = {"kind": "simple" if simple else "extended", "text": text.decode("utf-8", "replace")}
    return json.dumps(data, ensure_ascii=True, sort_keys=True, separators=(",", ":")).encode()


def _native(simple: bool, text: bytes) -> bytes:
    return _relay.statement_json(b"Q" if simple else b"P", b"", text)


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
        assert _native(simple, text) == _python(simple, text)


@settings(max_examples=3000, deadline=None)
@given(st.booleans(), st.binary(max_size=64))
@example(True, b"\xe2\x82")
def test_any_bytes_render_as_python_renders_them(simple: bool, text: bytes) -> None:
    assert _native(simple, text) == _python(simple, text)


@settings(max_examples=1000, deadline=None)
@given(st.booleans(), st.text(max_size=32))
def test_any_text_round_trips(simple: bool, text: str) -> None:
    raw = text.encode("utf-8", "surrogatepass")
    rendered = _native(simple, raw)
    assert rendered.isascii()
    assert json.loads(rendered)["text"] == raw.decode("utf-8", "replace")


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(EDGES) | st.binary(max_size=8), max_size=20))
def test_mixed_runs_render_as_python_renders_them(parts: list[bytes]) -> None:
    text = b"".join(parts)
    assert _native(True, text) == _python(True, text)


def test_the_plain_forms_are_the_plugin_contracts() -> None:
    assert render_statement("simple", b"SELECT 1") == _python(True, b"SELECT 1")
    assert render_statement("extended", b"SELECT $1") == _python(False, b"SELECT $1")


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from(EDGES) | st.binary(max_size=24), st.sampled_from(EDGES) | st.binary())
def test_named_statements_and_their_runs_render_as_python_renders_them(
    name: bytes, text: bytes
) -> None:
    """A Parse of a named statement carries its name; a Bind of one (a run of it) carries only
    the name: keys sorted, no "name" when it is empty."""
    assert _relay.statement_json(b"P", name, text) == render_statement("extended", text, name)
    assert _relay.statement_json(b"B", name, text) == render_statement("execute", None, name)
    assert _relay.statement_json(b"Q", name, text) == render_statement("simple", text)
    parsed = json.loads(_relay.statement_json(b"P", name, text))
    assert list(parsed) == (["kind", "name", "text"] if name else ["kind", "text"])


def test_the_style_must_be_one_the_engine_renders() -> None:
    with pytest.raises(ValueError, match="style"):
        _relay.statement_json(b"X", b"", b"")

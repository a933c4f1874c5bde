"""The SSH relay's decisions and recordings, without sockets (plugins/jitvault_ssh/relay.py),
and the asciicast file built from a session's recorded events (services/sessions.py)."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jitvault.domain.policy import PolicyDocument
from jitvault.services.sessions import asciicast_of
from jitvault_ssh import relay
from jitvault_ssh.relay import LoginName, SftpOperations, TerminalRecording


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!I", len(raw)) + raw


def _packet(kind: int, body: bytes, request_id: int = 7) -> bytes:
    payload = bytes([kind]) + struct.pack("!I", request_id) + body
    return struct.pack("!I", len(payload)) + payload


# ------------------------------------------------------------------------------- login names


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("deploy.42", LoginName("deploy", 42)),
        ("a.b.7", LoginName("a.b", 7)),
        ("deploy", None),
        ("deploy.", None),
        (".42", None),
        ("deploy.4x2", None),
        ("deploy.-1", None),
        ("deploy.٤٢", None),  # digits, but not ASCII ones
        ("deploy." + "9" * 19, None),
    ],
)
def test_the_login_name_is_account_dot_grant_id_and_nothing_else(
    name: str, parsed: LoginName | None
) -> None:
    assert relay.parse_login_name(name) == parsed


# ------------------------------------------------------------------------------- decisions


def test_only_allow_listed_environment_variables_reach_the_target() -> None:
    env = {
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TERM": "xterm",
        "LD_PRELOAD": "/tmp/evil.so",
        "PATH": "/tmp",
        "BASH_ENV": "/tmp/x",
        "lc_all": "lower-case is not a real LC_ name",
        "LC_LONG": "x" * 1000,
        "LC_NUL": "a\0b",
    }
    assert relay.allowed_env(env) == {"LANG": "C.UTF-8", "LC_ALL": "C", "TERM": "xterm"}


def test_only_the_sftp_subsystem_is_relayed() -> None:
    assert relay.subsystem_allowed("sftp")
    assert not relay.subsystem_allowed("netconf")
    assert not relay.subsystem_allowed("SFTP")


def test_forwarding_needs_the_policy_and_a_real_destination() -> None:
    assert relay.forwarding_allowed(True, "127.0.0.1", 5432)
    assert not relay.forwarding_allowed(False, "127.0.0.1", 5432)
    assert not relay.forwarding_allowed(True, "", 5432)
    assert not relay.forwarding_allowed(True, "127.0.0.1", 0)
    assert not relay.forwarding_allowed(True, "127.0.0.1", 70000)


def test_a_policy_rule_forbids_forwarding_unless_it_says_allow_forwarding() -> None:
    doc = PolicyDocument.model_validate(
        {
            "rules": [
                {"name": "plain", "auto_approve": True},
                {"name": "tunnels", "auto_approve": True, "allow_forwarding": True},
            ]
        }
    )
    assert [r.allow_forwarding for r in doc.rules] == [False, True]


# ------------------------------------------------------------------------------- asciicast


def test_output_is_batched_into_one_event_per_interval_not_one_per_chunk() -> None:
    rec = TerminalRecording(100.0, 80, 24, "xterm", batch_seconds=0.1, batch_bytes=1 << 20)
    assert rec.output(b"a", 100.01) == []
    assert rec.output(b"b", 100.05) == []
    assert rec.output(b"c", 100.09) == []
    flushed = rec.output(b"d", 100.2)  # past the interval: the batch so far is one event
    assert flushed == [[0.01, "o", "abc"]]
    assert rec.flush() == [[0.2, "o", "d"]]
    assert rec.flush() == []


def test_a_full_batch_is_flushed_at_the_byte_limit() -> None:
    rec = TerminalRecording(0.0, 80, 24, "xterm", batch_seconds=10, batch_bytes=8)
    assert rec.output(b"1234", 0.5) == []
    assert rec.output(b"5678", 0.6) == [[0.5, "o", "12345678"]]
    assert rec.pending_since is None


def test_a_resize_comes_after_the_output_before_it() -> None:
    rec = TerminalRecording(0.0, 80, 24, "xterm")
    rec.output(b"before", 1.0)
    assert rec.resize(100, 30, 1.05) == [[1.0, "o", "before"], [1.05, "r", "100x30"]]
    assert (rec.width, rec.height) == (100, 30)
    assert rec.header(1_700_000_000) == {
        "version": 2,
        "width": 100,
        "height": 30,
        "timestamp": 1_700_000_000,
        "env": {"TERM": "xterm"},
    }


def test_a_utf8_character_split_across_chunks_is_recorded_whole() -> None:
    rec = TerminalRecording(0.0, 80, 24, "xterm")
    euro = "€".encode()
    rec.output(b"x" + euro[:1], 0.0)
    rec.output(euro[1:], 0.01)
    assert rec.flush() == [[0.0, "o", "x€"]]
    rec.output(b"\xe2", 0.02)  # a cut character at the very end
    assert rec.flush(final=True) == [[0.02, "o", "\ufffd"]]


@given(st.lists(st.binary(max_size=200), max_size=30))
def test_batching_loses_and_reorders_no_output(chunks: list[bytes]) -> None:
    rec = TerminalRecording(0.0, 80, 24, "xterm", batch_seconds=0.05, batch_bytes=256)
    events = []
    for n, chunk in enumerate(chunks):
        events += rec.output(chunk, n * 0.02)
    events += rec.flush(final=True)
    assert "".join(e[2] for e in events) == b"".join(chunks).decode("utf-8", errors="replace")
    times = [e[0] for e in events]
    assert times == sorted(times)


def test_the_asciicast_file_is_the_header_then_the_channels_events() -> None:
    events = [
        {"kind": "shell", "data": {"channel": 1, "pty": True}},
        {
            "kind": "asciicast_header",
            "data": {"channel": 1, "version": 2, "width": 80, "height": 24, "timestamp": 5},
        },
        {"kind": "asciicast", "data": {"channel": 1, "events": [[0.1, "o", "hi"]]}},
        {"kind": "asciicast", "data": {"channel": 2, "events": [[0.1, "o", "other"]]}},
        {"kind": "asciicast", "data": {"channel": 1, "events": [[0.3, "r", "90x20"]]}},
    ]
    lines = [json.loads(line) for line in asciicast_of(events).splitlines()]
    assert lines == [
        {"version": 2, "width": 80, "height": 24, "timestamp": 5},
        [0.1, "o", "hi"],
        [0.3, "r", "90x20"],
    ]
    assert asciicast_of(events, channel=2) == ""
    assert asciicast_of([]) == ""


# ------------------------------------------------------------------------------- sftp


def test_sftp_requests_that_name_paths_are_recorded_and_data_is_skipped() -> None:
    stream = (
        _packet(3, _string("/home/u/a.txt") + struct.pack("!I", 0x02 | 0x08 | 0x10) + b"\0" * 4)
        + _packet(6, _string("handle") + struct.pack("!Q", 0) + _string("x" * 100_000))
        + _packet(18, _string("a.txt") + _string("b.txt"))
        + _packet(200, _string("posix-rename@openssh.com") + _string("b.txt") + _string("c"))
        + _packet(200, _string("statvfs@openssh.com") + _string("/"))
        + _packet(13, _string("c"))
        + _packet(14, _string("dir") + b"\0" * 4)
    )
    ops = SftpOperations()
    # fed a byte at a time and whole, it names the same operations
    one_by_one = [op for i in range(len(stream)) for op in ops.feed(stream[i : i + 1])]
    assert one_by_one == SftpOperations().feed(stream)
    assert one_by_one == [
        {"op": "open", "path": "/home/u/a.txt", "flags": ["write", "create", "trunc"]},
        {"op": "rename", "path": "a.txt", "to": "b.txt"},
        {"op": "rename", "path": "b.txt", "to": "c"},
        {"op": "extended", "name": "statvfs@openssh.com"},
        {"op": "remove", "path": "c"},
        {"op": "mkdir", "path": "dir"},
    ]


def test_an_sftp_packet_that_cannot_be_parsed_is_reported_not_raised() -> None:
    ops = SftpOperations()
    assert ops.feed(_packet(13, b"\0\0\0\xff" + b"short")) == [{"op": "unparsed"}]
    assert ops.feed(struct.pack("!I", 0) + b"") == []
    assert ops.feed(b"\x05") == [{"op": "unparsed"}]
    # a huge "recorded" request is skipped, not buffered
    huge = SftpOperations()
    assert huge.feed(struct.pack("!IB", 10_000_000, 3) + b"x" * 1000) == []
    assert len(huge._buffer) == 0


@given(st.binary(max_size=2000))
def test_any_bytes_fed_to_the_sftp_reader_never_raise(data: bytes) -> None:
    ops = SftpOperations()
    for op in ops.feed(data):
        assert op["op"] in {
            "open", "setstat", "remove", "mkdir", "rmdir", "rename", "symlink",
            "hardlink", "extended", "unparsed",
        }  # fmt: skip

"""The SSH relay's decisions, without sockets: who the client says it is, what may pass,
and what is recorded.

Everything here is pure (bytes and values in, values out), so the rules are unit-tested without
an SSH connection; :mod:`.frontend` only applies them.
"""

from __future__ import annotations

import codecs
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: environment variables a client may pass to the target; anything else (LD_PRELOAD, PATH,
#: BASH_ENV...) could change what the target runs for the vaulted account
ENV_ALLOWED = frozenset({"LANG", "TERM", "COLORTERM", "TZ"})
_ENV_ALLOWED_PREFIXES = ("LC_",)
_ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_ENV_VALUE_MAX = 256

#: the only subsystem relayed (scp uses it too since OpenSSH 9.0)
SUBSYSTEMS = frozenset({"sftp"})

#: one asciicast output event per this many seconds or bytes of terminal output, not one per read
BATCH_SECONDS = 0.1
BATCH_BYTES = 32 * 1024


@dataclass(frozen=True)
class LoginName:
    """The SSH user name ``jitvault connect`` prints: ``<account>.<grant id>``."""

    account: str
    grant_id: int


def parse_login_name(username: str) -> LoginName | None:
    """``deploy.42`` -> LoginName("deploy", 42); None if it is not of that form."""
    account, dot, grant = username.rpartition(".")
    if not dot or not account or not grant.isascii() or not grant.isdigit() or len(grant) > 18:
        return None
    return LoginName(account, int(grant))


def allowed_env(env: Mapping[str, str]) -> dict[str, str]:
    """The client's environment variables that may reach the target (the allow-list)."""
    return {
        name: value
        for name, value in env.items()
        if _ENV_NAME.fullmatch(name)
        and (name in ENV_ALLOWED or name.startswith(_ENV_ALLOWED_PREFIXES))
        and len(value) <= _ENV_VALUE_MAX
        and "\0" not in value
    }


def subsystem_allowed(name: str) -> bool:
    """May the client start this subsystem?"""
    return name in SUBSYSTEMS


def forwarding_allowed(policy_allows: bool, dest_host: str, dest_port: int) -> bool:
    """May the client open a ``-L`` (direct-tcpip) channel to ``dest_host:dest_port``?

    Only if the grant's policy rule says ``allow_forwarding: true``, and only to a real port.
    """
    return policy_allows and bool(dest_host) and 0 < dest_port < 65536


class TerminalRecording:
    """A pty channel's output as asciicast v2 events, batched.

    Output chunks within :data:`BATCH_SECONDS` of the first one (or until :data:`BATCH_BYTES`)
    make one ``[t, "o", text]`` event, stamped with the time of its first chunk; a resize is a
    ``[t, "r", "WxH"]`` event, after the output before it. Bytes are decoded as UTF-8 across
    chunk boundaries (a character cut in two by the network is kept whole).
    """

    def __init__(
        self,
        started: float,
        width: int,
        height: int,
        term: str,
        batch_seconds: float = BATCH_SECONDS,
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        self.started = started
        self.width = width or 80
        self.height = height or 24
        self.term = term
        self.batch_seconds = batch_seconds
        self.batch_bytes = batch_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[str] = []
        self._pending_size = 0
        self._pending_at: float | None = None
        self._last_at = started

    def header(self, timestamp: int) -> dict[str, Any]:
        """The asciicast v2 header line (as a dict)."""
        return {
            "version": 2,
            "width": self.width,
            "height": self.height,
            "timestamp": timestamp,
            "env": {"TERM": self.term},
        }

    def _at(self, now: float) -> float:
        return round(max(0.0, now - self.started), 6)

    @property
    def pending_since(self) -> float | None:
        """When the oldest output not yet flushed arrived (None: nothing pending)."""
        return self._pending_at

    def output(self, data: bytes, now: float) -> list[list[Any]]:
        """Take a chunk of output; returns the events to record now (a full batch), or []."""
        self._last_at = now
        text = self._decoder.decode(data)
        if not text:
            return []
        if self._pending_at is None:
            self._pending_at = now
        elif now - self._pending_at >= self.batch_seconds:
            flushed = self.flush()
            self._pending_at = now
            self._pending.append(text)
            self._pending_size = len(data)
            return flushed
        self._pending.append(text)
        self._pending_size += len(data)
        return self.flush() if self._pending_size >= self.batch_bytes else []

    def resize(self, width: int, height: int, now: float) -> list[list[Any]]:
        """A window size change: pending output first, then the resize event."""
        events = self.flush()
        self.width, self.height = width, height
        events.append([self._at(now), "r", f"{width}x{height}"])
        return events

    def flush(self, final: bool = False) -> list[list[Any]]:
        """The pending output as one event ([] if none); ``final`` also ends the decoder."""
        if final:
            tail = self._decoder.decode(b"", final=True)
            if tail:
                self._pending.append(tail)
                if self._pending_at is None:
                    self._pending_at = self._last_at
        if self._pending_at is None:
            return []
        event = [self._at(self._pending_at), "o", "".join(self._pending)]
        self._pending.clear()
        self._pending_size = 0
        self._pending_at = None
        return [event]


# SFTP v3 (draft-ietf-secsh-filexfer-02) packet types whose paths are recorded
_FXP_OPEN = 3
_FXP_SETSTAT = 9
_FXP_REMOVE = 13
_FXP_MKDIR = 14
_FXP_RMDIR = 15
_FXP_RENAME = 18
_FXP_SYMLINK = 20
_FXP_EXTENDED = 200
#: OpenSSH's extensions that name two paths (its sftp renames with posix-rename)
_EXTENDED_TWO_PATHS = {"posix-rename@openssh.com": "rename", "hardlink@openssh.com": "hardlink"}
_RECORDED = {
    _FXP_OPEN: "open",
    _FXP_SETSTAT: "setstat",
    _FXP_REMOVE: "remove",
    _FXP_MKDIR: "mkdir",
    _FXP_RMDIR: "rmdir",
    _FXP_RENAME: "rename",
    _FXP_SYMLINK: "symlink",
    _FXP_EXTENDED: "extended",
}
_OPEN_FLAGS = ((0x01, "read"), (0x02, "write"), (0x04, "append"), (0x08, "create"), (0x10, "trunc"))
#: a recorded request bigger than this is not a real one: it is skipped, not buffered
_MAX_RECORDED_PACKET = 64 * 1024
_U32 = struct.Struct("!I")


@dataclass
class SftpOperations:
    """Reads the client-to-server SFTP stream as it passes and names the file operations in it.

    Data packets (WRITE, READ...) are skipped by length without being buffered, so an upload of
    any size costs no memory here; only the small requests that name paths are parsed. The
    stream itself is relayed unchanged whatever this finds: a packet it cannot parse is
    reported as ``{"op": "unparsed"}``, never an error.
    """

    _buffer: bytearray = field(default_factory=bytearray)
    _skip: int = 0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """The operations completed by ``data`` (in order)."""
        ops: list[dict[str, Any]] = []
        view = memoryview(data)
        while view:
            if self._skip:
                n = min(self._skip, len(view))
                self._skip -= n
                view = view[n:]
                continue
            need = 5 - len(self._buffer) if len(self._buffer) < 5 else 0
            if need:
                self._buffer += view[:need]
                view = view[need:]
                if len(self._buffer) < 5:
                    break
            length = _U32.unpack_from(self._buffer)[0]
            kind = self._buffer[4]
            if length < 1:
                self._buffer.clear()
                ops.append({"op": "unparsed"})
                continue
            if kind not in _RECORDED or length > _MAX_RECORDED_PACKET:
                # not recorded: skip the rest of this packet's body
                self._skip = length - (len(self._buffer) - 4)
                self._buffer.clear()
                continue
            missing = length + 4 - len(self._buffer)
            take = min(missing, len(view))
            self._buffer += view[:take]
            view = view[take:]
            if take < missing:
                break
            ops.append(_describe(kind, bytes(self._buffer[5:])))
            self._buffer.clear()
        return ops


def _strings(body: bytes, count: int) -> tuple[list[str], bytes]:
    """``count`` SSH strings from the start of ``body`` (after the request id)."""
    out: list[str] = []
    pos = 4  # the request id
    for _ in range(count):
        if pos + 4 > len(body):
            raise ValueError("truncated")
        (size,) = _U32.unpack_from(body, pos)
        if pos + 4 + size > len(body):
            raise ValueError("truncated")
        out.append(body[pos + 4 : pos + 4 + size].decode("utf-8", errors="replace"))
        pos += 4 + size
    return out, body[pos:]


def _describe(kind: int, body: bytes) -> dict[str, Any]:
    op = _RECORDED[kind]
    try:
        if kind == _FXP_EXTENDED:
            (request,), _ = _strings(body, 1)
            if request not in _EXTENDED_TWO_PATHS:
                return {"op": op, "name": request}
            (_, first, second), _ = _strings(body, 3)
            return {"op": _EXTENDED_TWO_PATHS[request], "path": first, "to": second}
        if kind in (_FXP_RENAME, _FXP_SYMLINK):
            (first, second), _ = _strings(body, 2)
            return {"op": op, "path": first, "to": second}
        (path,), rest = _strings(body, 1)
        if kind == _FXP_OPEN:
            flags = _U32.unpack_from(rest)[0] if len(rest) >= 4 else 0
            return {"op": op, "path": path, "flags": [n for bit, n in _OPEN_FLAGS if flags & bit]}
        return {"op": op, "path": path}
    except ValueError:
        return {"op": "unparsed"}


__all__ = [
    "BATCH_BYTES",
    "BATCH_SECONDS",
    "ENV_ALLOWED",
    "LoginName",
    "SftpOperations",
    "TerminalRecording",
    "allowed_env",
    "forwarding_allowed",
    "parse_login_name",
    "subsystem_allowed",
]

"""The native relay's Python side: a logged-in session handed to :mod:`._relay`.

The C engine (``_relay.c``) runs one thread per process with one epoll loop over every session
given to it, and moves bytes both ways without the GIL, with the framing rules of
:class:`~.protocol.FrontendRelay` and :class:`~.frontend.BackendFramer` (statement texts queued
for the recorder before their message leaves; the client's stream kept at message boundaries).
This module is the loop-side half: it gives the engine a session's two sockets, and reads the
engine's queue when its eventfd says something waits: statements (rendered as the recording's
JSON by the engine, recorded through the core, which may refuse: the session is then cut), and
sessions that ended by themselves. Closing (with a last FATAL message where the client's stream
allows it) is asked of the engine too.

A side that speaks TLS (the client's, or the target's) goes to the engine with its TLS
connection: Python's ssl module makes it and runs the handshake, the engine then drives the
same OpenSSL connection (:func:`tls_connections` says which ones it can take: on CPython 3.11
to 3.13, whose ``_ssl`` object layout the engine knows, those made with the OpenSSL the engine
is linked with). Python must not touch such a connection again; the session keeps its
``ssl.SSLObject`` until the engine has closed it.

The Python relay stays where the engine cannot take a session (a TLS connection it does not
know), where the extension is not built, where ``JITVAULT_PG_NATIVE_RELAY=0`` is set, and for
TLS sessions where ``JITVAULT_PG_NATIVE_TLS=0`` is.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import Any, Protocol

from jitvault.errors import JitvaultError
from jitvault.plugin_api import ProxyContext
from jitvault_postgres import protocol as pg
from jitvault_postgres.protocol import ProtocolViolation

try:
    from jitvault_postgres import _relay

    BUILT = True
except ImportError:  # not built (JITVAULT_NO_NATIVE=1, or not Linux)
    BUILT = False

log = logging.getLogger(__name__)

#: why the engine stopped a session by itself (its end codes)
END_REASONS = {
    1: "client closed",
    2: "client connection lost",
    3: "upstream closed",
    4: "upstream connection lost",
    5: "protocol violation",
    6: "upstream protocol violation",
    7: "the proxy is out of memory",
}
_CLIENT_VIOLATION_CODE = 5
#: while the core refuses recordings, how often the closed gate looks again
_RECHECK_SECONDS = 0.1


def available() -> bool:
    """Is the native relay built, and not turned off (``JITVAULT_PG_NATIVE_RELAY=0``)?"""
    return BUILT and os.environ.get("JITVAULT_PG_NATIVE_RELAY", "1") != "0"


def tls_connections(ssl_objects: tuple[Any, Any]) -> tuple[Any, Any] | None:
    """What the engine is given for a session's two sides (client, server), from each
    transport's ``get_extra_info("ssl_object")``: None for a plain TCP side, the ``_ssl``
    connection behind a TLS one; None for the whole session where the engine cannot take one
    of them (``_relay.tls_supported``: the checks are the engine's, which knows the layout it
    reads; or ``JITVAULT_PG_NATIVE_TLS=0``): it then stays in the Python relay."""
    if ssl_objects == (None, None):
        return ssl_objects
    if os.environ.get("JITVAULT_PG_NATIVE_TLS", "1") == "0":
        return None
    client, server = (
        None if side is None else getattr(side, "_sslobj", None) for side in ssl_objects
    )
    for side, connection in ((ssl_objects[0], client), (ssl_objects[1], server)):
        if side is not None and (connection is None or not _relay.tls_supported(connection)):
            return None
    return client, server


def client_violation(code: int, message_type: int, length: int) -> ProtocolViolation:
    """The engine's violation, worded as :class:`~.protocol.FrontendRelay` words it (one
    table: :func:`~.protocol.relay_violation`)."""
    return pg.relay_violation(code, bytes([message_type]), length)


class NativeSession(Protocol):
    """What the engine's events are delivered to (one client connection)."""

    def native_unrecorded(self, exc: JitvaultError) -> None:
        """The core refused the statements the session forwarded (it keeps them): end it."""

    def native_ended(self, reason: str, violation: ProtocolViolation | None) -> None: ...

    def native_closed(self) -> None: ...


class RelayEngine(Protocol):
    """What :class:`NativeRelays` asks of the engine (``_relay.Engine``; see ``_relay.pyi``)."""

    def fileno(self) -> int:
        """An eventfd, readable when :meth:`take` has something."""

    def add(
        self,
        sid: int,
        client_fd: int,
        server_fd: int,
        to_server: bytes,
        to_client: bytes,
        real_pid: int = 0,
        given_pid: int = 0,
        client_tls: Any = None,
        server_tls: Any = None,
        /,
    ) -> None:
        """Relay a session; notifications from backend ``real_pid`` are shown to the client
        as from ``given_pid`` (both 0: none rewritten); a TLS side with its connection (see
        :func:`tls_connections`), which the engine drives from then on."""

    def close(self, sid: int, last: bytes, terminate: bytes, linger: float, /) -> None: ...

    def set_gate(self, open: bool, /) -> None: ...

    def take(self) -> Sequence[tuple[Any, ...]]:
        """Every event queued since the last take: ``("q", sid, count, json)``, ``("e", sid,
        code, violation, message type, length)``, ``("c", sid)``."""

    def stop(self) -> None: ...


class NativeRelays:
    """The engine of one event loop, and the sessions it relays."""

    def __init__(self, loop: asyncio.AbstractEventLoop, engine: RelayEngine | None = None) -> None:
        self._engine: RelayEngine = _relay.Engine() if engine is None else engine
        self._loop = loop
        self._sessions: dict[int, NativeSession] = {}
        self._ctx: ProxyContext | None = None
        self._gated = False
        loop.add_reader(self._engine.fileno(), self.drain)

    def add(
        self,
        session_id: int,
        session: NativeSession,
        sockets: tuple[int, int],
        early: tuple[bytes, bytes],
        ctx: ProxyContext,
        pids: tuple[int, int] = (0, 0),
        tls: tuple[Any, Any] = (None, None),
    ) -> None:
        """Relay a session: its client and server sockets (the engine's from now on) and what
        was read from each side and not relayed yet (to the server, to the client); ``pids``:
        its backend's process id and the one its client was given (see
        :meth:`~.frontend.BackendFramer.notify_pid`); ``tls``: each side's TLS connection
        (:func:`tls_connections`), or None.

        Where the engine cannot take them (stopped at shutdown, out of memory), both sockets
        are closed before the error is raised: nothing holds them any more."""
        self._sessions[session_id] = session
        self._ctx = ctx
        try:
            self._engine.add(session_id, *sockets, *early, *pids, *tls)
        except BaseException:
            del self._sessions[session_id]
            for fd in sockets:
                os.close(fd)
            raise

    def close(self, session_id: int, last: bytes, terminate: bytes, linger: float) -> None:
        """End a session: ``last`` to the client (where its stream is at a message boundary),
        ``terminate`` to the server, a lingering close of the client (at most ``linger`` s);
        the session's ``native_closed`` follows."""
        self._engine.close(session_id, last, terminate, linger)

    def drain(self) -> None:
        """Handle every event the engine queued: sessions that ended or closed, and the
        statements they forwarded, handed to the core in one call (the loop calls this when
        the engine's eventfd is readable)."""
        sessions, ctx = self._sessions, self._ctx
        forwarded: list[tuple[int, int, bytes]] = []  # every session's statements: one call
        try:
            for event in self._engine.take():
                session = sessions.get(event[1])
                if session is None:
                    continue
                if event[0] == "q":
                    forwarded.append(event[1:])
                elif event[0] == "e":
                    code = event[2]
                    violation = (
                        client_violation(event[3], event[4], event[5])
                        if code == _CLIENT_VIOLATION_CODE
                        else None
                    )
                    session.native_ended(END_REASONS.get(code, "relay failed"), violation)
                else:
                    del self._sessions[event[1]]
                    session.native_closed()
        finally:  # what ran is recorded, whatever an end's handling did
            if forwarded and ctx is not None:
                self._record(ctx, forwarded)
        if self._gated or ctx is None:
            return
        # the gate: no client is read while the core refuses recordings (statements would run
        # before it has them) or while its writer is behind (backpressure)
        if not ctx.recording_available():
            self._close_gate()
            self._loop.call_later(_RECHECK_SECONDS, self._recheck)
        elif forwarded:
            backlog = ctx.recording_backlog()
            if backlog is not None:
                self._close_gate()
                asyncio.ensure_future(backlog).add_done_callback(self._open_gate)

    def _record(self, ctx: ProxyContext, forwarded: list[tuple[int, int, bytes]]) -> None:
        """Hand the statements to the core (all of them are kept whatever it says); if it
        refuses, every session whose statements were in the batch ends."""
        try:
            ctx.record_forwarded(forwarded)
        except JitvaultError as exc:
            for session_id, _, _ in forwarded:
                session = self._sessions.get(session_id)
                if session is not None:
                    session.native_unrecorded(exc)

    def _close_gate(self) -> None:
        self._gated = True
        self._engine.set_gate(False)

    def _open_gate(self, _done: object = None) -> None:
        self._gated = False
        self._engine.set_gate(True)

    def _recheck(self) -> None:
        if self._ctx is None or self._ctx.recording_available():
            self._open_gate()
        else:
            self._loop.call_later(_RECHECK_SECONDS, self._recheck)

    def shutdown(self) -> None:
        """Record what is queued, close every socket, end the thread."""
        self.drain()
        self._loop.remove_reader(self._engine.fileno())
        self._engine.stop()
        self.drain()
        if self._sessions:
            log.info("postgres proxy: %d native sessions closed at shutdown", len(self._sessions))


__all__ = [
    "BUILT",
    "END_REASONS",
    "NativeRelays",
    "NativeSession",
    "RelayEngine",
    "available",
    "client_violation",
    "tls_connections",
]

"""The PostgreSQL session proxy: the server side a client talks to, and the relay.

One :class:`PostgresFrontend` serves every client connection of the postgres listener:

1. the start phase (SSLRequest -> TLS with the core's certificate, GSSENCRequest -> "N",
   CancelRequest -> forwarded to the backend it names, through the fake keys handed out here
   and published to every node through the core);
2. SCRAM-SHA-256 against the session token's verifier (the connection user is
   ``<account>.<token id>``; an unknown id runs the same exchange against a mock verifier, so
   unknown and wrong tokens look alike); the core then opens the session;
3. the upstream login with the vaulted credential (:mod:`.upstream`);
4. the relay, callback-driven on the two :class:`~.wire.Wire` protocols (no task per session):
   client bytes go through :class:`~.protocol.FrontendRelay`, which holds back only query texts
   (simple ``Q`` and extended ``P``, their raw bytes queued for recording before they are
   forwarded: the core decodes, encrypts and stores them in its writer, not here) and
   Terminate, and streams everything else (COPY data, bind values) as it comes; server bytes are
   passed through as they come, cut at message boundaries only, so that the core can end the
   session at any time with a FATAL 57P01 the client understands. Each side's outgoing buffer
   pauses the other side's reading above its high-water mark (bounded memory per session).
   Where the native relay is built (:mod:`.native`), the logged-in session's two sockets go to
   it instead, with the TLS connection of each side that has one.

Nothing here raises out of :meth:`PostgresFrontend.handle`; log lines carry no secret and no
driver or server message text.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import struct
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from jitvault.domain import Sensitive
from jitvault.errors import AuthError, JitvaultError, Unavailable
from jitvault.plugin_api import (
    TOO_MANY_LOGGING_IN,
    TRY_AGAIN_SHORTLY_HINT,
    Cut,
    LoginPlace,
    ProxyContext,
    ProxyListener,
    RenderedStatements,
    SessionTicket,
    render_statement,
    statements_done,
)
from jitvault.plugin_api.scram import (
    DEFAULT_ITERATIONS,
    MECHANISM,
    ScramServer,
    ScramVerifier,
    parse_verifier,
)
from jitvault_postgres import native
from jitvault_postgres import protocol as pg
from jitvault_postgres import upstream as up
from jitvault_postgres.wire import LINGER_SECONDS, Wire

log = logging.getLogger(__name__)

#: from the first byte to ReadyForQuery (PostgreSQL's authentication_timeout is 60 s)
HANDSHAKE_TIMEOUT_SECONDS = 10.0
_READ_CHUNK = 65536
_CLOSE_TIMEOUT_SECONDS = 2.0
_HEADER = struct.Struct("!ci")

SQLSTATE_TOO_MANY_CONNECTIONS = "53300"
SQLSTATE_INVALID_AUTHORIZATION = "28000"
SQLSTATE_CANNOT_CONNECT_NOW = "57P03"
SQLSTATE_CONNECTION_FAILURE = "08006"
SQLSTATE_UNABLE_TO_CONNECT = "08001"
#: why a session whose statement cannot be recorded is cut (the core refused the event)
RECORDING_REFUSED = "the session recording cannot be stored"
UPSTREAM_REFUSED_MESSAGE = (
    "the vaulted credential was refused by the target; an operator has been told"
)
#: the answer to a client that did not ask for TLS where the proxy requires it
TLS_REQUIRED = pg.fatal_error(
    SQLSTATE_INVALID_AUTHORIZATION,
    "this proxy requires TLS",
    hint="connect with sslmode=require (as jitvault connect prints)",
)
#: the answer to a connection the core has no place for (as PostgreSQL answers when it cannot
#: start a backend: before reading anything, which libpq shows in reply to its first message)
BUSY = pg.fatal_error(
    SQLSTATE_TOO_MANY_CONNECTIONS, TOO_MANY_LOGGING_IN, hint=TRY_AGAIN_SHORTLY_HINT
)


_READY = ord("Z")
_NOTIFICATION = ord("A")
_PID = struct.Struct("!i")  # a NotificationResponse's first field, BackendKeyData's too


def _address(wire: Wire) -> str:
    """The client's address (its source, as the core bounds it)."""
    peer = wire.extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


def _now_us() -> int:
    return time.monotonic_ns() // 1000


#: the recorded kind of each surfaced statement ("execute": a statement run again, by its name)
_KINDS = {b"Q": "simple", b"P": "extended", b"B": "execute"}


def recorded_statements(
    surfaced: list[pg.Surfaced],
) -> list[tuple[str, bytes]] | RenderedStatements:
    """What the client's messages a feed surfaced record, in order: ``(style, text)`` pairs
    (decoded off the event loop, by the recorder), or, when a prepared statement is named
    among them, each statement rendered here (:func:`render_statement`): a named Parse with
    its name, and each Bind that runs a statement again as its ``execute`` by name (empty for
    the unnamed statement), as the native relay renders them."""
    if not any(name or t == b"B" for t, name, _ in surfaced):
        return [(_KINDS[t], text) for t, _, text in surfaced if t in _KINDS]
    rendered = [
        render_statement(_KINDS[t], None if t == b"B" else text, name)
        for t, name, text in surfaced
        if t in _KINDS
    ]
    return RenderedStatements(len(rendered), b",".join(rendered))


class BackendFramer:
    """Cuts the server's byte stream at message boundaries, without parsing any body.

    :meth:`feed` returns what may be sent to the client now: every complete message (the chunk
    itself when it ends at a boundary: no copy). The start of an incomplete message is held
    back until it is complete, so that between two writes the client's stream is at a message
    boundary and a FATAL error can be put in at any time; a message longer than
    ``hold_limit`` is streamed through instead of being held (:attr:`at_boundary` is False
    while it passes). :attr:`readies` counts the ReadyForQuery messages returned (the relay
    takes and zeroes it: :class:`~.protocol.StatementCycles`).

    The one body it touches: a NotificationResponse that names the session's own backend
    (:meth:`notify_pid`) names it by the process id the client was given in its BackendKeyData,
    so that a client tells its own notifications apart as it would on a direct connection.
    """

    __slots__ = ("_held", "_pids", "_through", "hold_limit", "pids", "readies")

    def __init__(self, hold_limit: int = 1 << 20) -> None:
        self.hold_limit = hold_limit
        self._held = bytearray()
        self._through = 0
        self.readies = 0
        #: the session's backend's process id, and the one its client was given
        self.pids: tuple[int, int] | None = None
        self._pids: tuple[bytes, bytes] | None = None

    def notify_pid(self, real: int, given: int) -> None:
        """From now on, notifications from backend ``real`` are shown as from ``given`` (the
        process id of the client's BackendKeyData: the proxy's cancel id)."""
        self.pids = (real, given)
        self._pids = (_PID.pack(real), _PID.pack(given))

    @property
    def at_boundary(self) -> bool:
        """Does what was returned so far end at a message boundary?"""
        return self._through == 0

    def feed(self, data: bytes) -> bytes:
        head = b""
        if self._through:
            n = min(self._through, len(data))
            self._through -= n
            if n == len(data):
                return data
            head, data = data[:n], data[n:]
        if self._held:
            self._held += data
            data = bytes(self._held)
            self._held.clear()
        pos, size = 0, len(data)
        own: list[int] = []  # where a notification of the session's backend names it
        while size - pos >= 5:
            length: int = _HEADER.unpack_from(data, pos)[1]
            if length < 4:
                raise pg.ProtocolViolation(f"invalid length {length} of a server message")
            end = pos + 1 + length
            if end > size:
                if end - pos > self.hold_limit:
                    self._through = end - size
                    pos = size
                break
            kind = data[pos]
            if kind == _READY:
                self.readies += 1
            elif (
                kind == _NOTIFICATION
                and self._pids is not None
                and length >= 8
                and data[pos + 5 : pos + 9] == self._pids[0]
            ):
                own.append(pos + 5)
            pos = end
        if own:
            assert self._pids is not None
            patched = bytearray(data)
            for at in own:
                patched[at : at + 4] = self._pids[1]
            data = bytes(patched)
        if pos < size:
            self._held += data[pos:]
            data = data[:pos]
        return head + data if head else data


@dataclass(frozen=True)
class _CancelTarget:
    """Where a client's cancel request goes: the real backend behind its fake key. Published
    through the core (sealed in the state store), so that any node of the deployment, and any
    process sharing the port, can forward a cancel request that reaches it."""

    endpoint: up.Endpoint
    pid: int
    secret_key: bytes = field(repr=False)

    def sealed(self) -> Sensitive[bytes]:
        return Sensitive(
            json.dumps(
                {
                    "host": self.endpoint.host,
                    "port": self.endpoint.port,
                    "pid": self.pid,
                    "key": self.secret_key.hex(),
                }
            ).encode()
        )

    @classmethod
    def unsealed(cls, raw: Sensitive[bytes]) -> _CancelTarget:
        held = json.loads(raw.reveal())
        endpoint = up.Endpoint(host=str(held["host"]), port=int(held["port"]))
        return cls(endpoint, int(held["pid"]), bytes.fromhex(held["key"]))


class _ClientGone(Exception):
    """The client closed its side (or the connection broke) before the relay."""


class _Listener:
    """The bound asyncio server, as the core's :class:`ProxyListener`."""

    def __init__(self, server: asyncio.Server, frontend: PostgresFrontend) -> None:
        self._server = server
        self._frontend = frontend

    @property
    def port(self) -> int:
        return int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        self._server.close()

    def release(self) -> None:
        self._frontend.stop_native()


class PostgresFrontend:
    """The postgres kind's :class:`~jitvault.plugin_api.ProtocolFrontend` (one per process)."""

    protocol = "postgres"

    def __init__(self) -> None:
        # the mock verifier of unknown token ids: a salt derived from the id (stable per id, as
        # a real token's is) and keys nobody knows
        self._mock_secret = secrets.token_bytes(32)
        self._mock_keys = (secrets.token_bytes(32), secrets.token_bytes(32))
        self._tasks: set[asyncio.Task[None]] = set()
        #: the native relay of plain-TCP sessions (made at the first one)
        self._native: native.NativeRelays | None = None

    # -- the contract ---------------------------------------------------------------------

    async def listen(self, host: str, port: int, ctx: ProxyContext) -> ProxyListener:
        frontend = self

        class ClientWire(Wire):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                place = ctx.admit(_address(self))
                if place is None:
                    self.write(BUSY)
                    frontend.spawn(self.close(LINGER_SECONDS))
                else:
                    frontend.spawn(frontend.handle(self, ctx, place))

        server = await asyncio.get_running_loop().create_server(
            ClientWire, host, port, reuse_port=ctx.reuse_port or None
        )
        return _Listener(server, self)

    async def handle(self, wire: Wire, ctx: ProxyContext, place: LoginPlace) -> None:
        """Serve one client until its session relays (the relay then runs on callbacks and
        finishes the connection itself), or to its end if it never gets that far. ``place``:
        its place among the connections logging in, given back when the login is over."""
        connection = _Connection(self, wire, ctx)
        relaying = False
        try:
            relaying = await connection.serve()
        except Exception as exc:  # a misbehaving client ends its own connection only
            log.warning("postgres proxy: a connection failed (%s)", type(exc).__name__)
        finally:
            place.release()
            if not relaying:
                await connection.finish()

    # -- shared state ---------------------------------------------------------------------

    def mock_verifier(self, token_id: str) -> ScramVerifier:
        salt = hmac.new(self._mock_secret, token_id.encode(), hashlib.sha256).digest()[:16]
        stored, server = self._mock_keys
        return ScramVerifier(DEFAULT_ITERATIONS, salt, stored, server)

    def native_relays(self) -> native.NativeRelays | None:
        """The native relay of this process's loop (None where it is not built or turned off)."""
        if self._native is None and native.available():
            self._native = native.NativeRelays(asyncio.get_running_loop())
        return self._native

    def stop_native(self) -> None:
        if self._native is not None:
            self._native.shutdown()
            self._native = None

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, keeping a reference until it is done."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Session:
    """A live session: what the core holds (a SessionHandle) and the relay's shared state."""

    def __init__(
        self, frontend: PostgresFrontend, ctx: ProxyContext, ticket: SessionTicket, client: Wire
    ) -> None:
        self.session_id = ticket.session_id
        self.frontend = frontend
        self.ctx = ctx
        self.ticket = ticket
        self.client = client
        self.upstream: up.Upstream | None = None
        self.framer = BackendFramer()
        #: why the session was cut (set once, by cut)
        self.cut_reason: str | None = None
        self.reported = False
        #: the native relay, once it relays this session
        self.native: native.NativeRelays | None = None

    async def close(self, cut: Cut) -> None:
        """The core cuts the session (SessionHandle): see :meth:`cut`."""
        # a grant that outlives the cut (its node stops): the client may connect again at once
        self.cut(cut.reason, cut.hint or pg.REQUEST_AGAIN_HINT)

    def cut(self, reason: str, hint: str = pg.REQUEST_AGAIN_HINT) -> None:
        """Tell the client why, cancel what the backend runs, close both sides. Idempotent."""
        if self.cut_reason is not None or self.reported:
            return
        self.cut_reason = reason
        fatal = pg.grant_expired_error(f"terminating connection: {reason}", hint)
        if self.native is not None:  # the engine puts it in where the stream allows it
            self.native.close(self.session_id, fatal, pg.terminate(), LINGER_SECONDS)
            backend = self.upstream
            if backend is not None:  # a backend busy in a query notices no closed socket
                self.frontend.spawn(
                    up.send_cancel(backend.endpoint, backend.pid, backend.secret_key)
                )
            log.info("postgres proxy: session %s cut (%s)", self.session_id, reason)
            return
        if self.framer.at_boundary:  # else a long row is on its way: just close
            self.client.write(fatal)
        # a lingering close: a client still sending would otherwise get a reset, which can
        # destroy the FATAL message before it reads it
        self.frontend.spawn(self.client.close(_CLOSE_TIMEOUT_SECONDS))
        upstream = self.upstream
        if upstream is not None:
            self.frontend.spawn(_stop_upstream(upstream))
        log.info("postgres proxy: session %s cut (%s)", self.session_id, reason)


async def _stop_upstream(upstream: up.Upstream) -> None:
    """Close the server connection and cancel a running query, so that its backend ends now
    (a backend busy in a query would not notice a closed socket until the query is over)."""
    upstream.wire.write(pg.terminate())
    upstream.close()
    await up.send_cancel(upstream.endpoint, upstream.pid, upstream.secret_key)


class _Connection:
    """One client connection, from its first byte to its end."""

    def __init__(self, frontend: PostgresFrontend, wire: Wire, ctx: ProxyContext) -> None:
        self.frontend = frontend
        self.wire = wire
        self.ctx = ctx
        self.codec = pg.FrontendReader()
        self._pending: list[pg.Message] = []
        self.source = _address(wire)
        self.session: _Session | None = None
        self.end_reason = "client closed"
        self.relay: pg.FrontendRelay | None = None
        self.cycles = pg.StatementCycles()
        self._ending = False
        #: native relay: the client's last message, and when the engine has closed the sockets
        self._native_last = b""
        self._native_closed: asyncio.Future[None] | None = None
        #: native relay: the ssl.SSLObject of each TLS side, kept while the engine drives them
        self._native_tls: tuple[object, object] = (None, None)

    # -- I/O helpers (the login phase) ------------------------------------------------------

    async def next(self) -> pg.Message:
        """The client's next message (raises _ClientGone at EOF, ProtocolViolation if bad)."""
        while not self._pending:
            try:
                data = await self.wire.read()
            except OSError:
                raise _ClientGone from None
            if not data:
                raise _ClientGone
            self._pending.extend(self.codec.feed(data))
        return self._pending.pop(0)

    async def send(self, data: bytes) -> None:
        await self.wire.send(data)

    async def fail(self, data: bytes) -> None:
        """Send a last (FATAL) message; the connection ends after it (see :meth:`finish`)."""
        self.wire.write(data)

    # -- the conversation -----------------------------------------------------------------

    async def serve(self) -> bool:
        """Log the client in; True once the relay has taken over the connection."""
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_SECONDS):
                startup = await self._start()
                if startup is None:
                    return False
                session = await self._login(startup)
                if session is None:
                    return False
        except TimeoutError:
            self.end_reason = "login timed out"
            return False
        except _ClientGone:
            self.end_reason = "client left during login"
            return False
        except pg.ProtocolViolation as exc:
            self.end_reason = "protocol violation"
            await self.fail(pg.protocol_violation_error(exc))
            return False
        except OSError:  # reset, broken pipe, a TLS handshake that failed
            self.end_reason = "client connection lost during login"
            return False
        self._start_relay(session)
        return True

    async def _start(self) -> pg.StartupMessage | None:
        """Answer encryption and cancel requests until the StartupMessage; None: all done."""
        while True:
            message = await self.next()
            match message:
                case pg.SSLRequest():
                    if self.ctx.ssl_context is None:
                        await self.send(pg.encryption_refused())
                    else:
                        await self.send(pg.encryption_accepted())
                        await self.wire.start_tls(self.ctx.ssl_context, server_side=True)
                    self.codec.resume_startup()
                case pg.GSSENCRequest():
                    await self.send(pg.encryption_refused())
                    self.codec.resume_startup()
                case pg.CancelRequest(pid=pid, secret_key=key):
                    backend = await self.ctx.cancel_backend(pid, key, self.source)
                    if backend is not None:
                        target = _CancelTarget.unsealed(backend)
                        await up.send_cancel(target.endpoint, target.pid, target.secret_key)
                    return None
                case pg.StartupMessage():
                    if self.ctx.require_tls and self.wire.tls is None:
                        # before any authentication: nothing of the token is asked for
                        self.end_reason = "client without TLS refused"
                        log.info(
                            "postgres proxy: a client from %s without TLS refused"
                            " (server.pg_proxy_require_tls)",
                            self.source,
                        )
                        await self.fail(TLS_REQUIRED)
                        return None
                    return message
                case _:  # the codec lets nothing else through in this phase
                    raise pg.ProtocolViolation("unexpected message before the startup")

    async def _login(self, startup: pg.StartupMessage) -> _Session | None:
        options = [name for name in startup.params if name.startswith("_pq_.")]
        if startup.minor != 0 or options:
            await self.send(pg.negotiate_protocol_version(0, options))
        user = startup.user
        account, dot, token_id = user.rpartition(".")
        well_formed = bool(dot and account and token_id)
        # SCRAM-SHA-256 only: the token never crosses the wire, even without TLS
        self.codec.expect_auth(pg.AuthPhase.SASL_INITIAL)
        await self.send(pg.authentication_sasl([MECHANISM]))
        first = await self.next()
        if not isinstance(first, pg.SASLInitialResponse) or first.mechanism != MECHANISM:
            await self._refuse(user)
            return None
        verifier = await self.ctx.token_verifier(token_id, self.source) if well_formed else None
        known: ScramVerifier | None = None
        if verifier is not None:
            with contextlib.suppress(JitvaultError):
                known = parse_verifier(verifier)
        scram = ScramServer(known or self.frontend.mock_verifier(token_id))
        try:
            server_first = scram.handle_client_first(first.data or b"")
        except JitvaultError:
            await self._refuse(user)
            return None
        self.codec.expect_auth(pg.AuthPhase.SASL_RESPONSE)
        await self.send(pg.authentication_sasl_continue(server_first))
        final = await self.next()
        if not isinstance(final, pg.SASLResponse):
            await self._refuse(user)
            return None
        try:
            server_final = scram.handle_client_final(final.data)
        except JitvaultError:
            await self._refuse(user)
            return None
        if known is None:
            await self._refuse(user)
            return None
        try:
            ticket = await self.ctx.open_verified(token_id, self.source)
        except AuthError:
            await self._refuse(user)
            return None
        except JitvaultError as exc:
            await self.fail(_open_refusal(exc))
            self.end_reason = "session refused"
            return None
        session = _Session(self.frontend, self.ctx, ticket, self.wire)
        self.session = session
        self.ctx.register(session)
        upstream = await self._upstream(session, startup)
        if upstream is None:
            return None
        if session.cut_reason is not None:
            await _stop_upstream(upstream)
            return None
        session.upstream = upstream
        # the client's cancel key: a fake one, published to every node (a cancel request is a
        # new connection, which may reach another node or process)
        fake_key = secrets.token_bytes(4)
        fake_pid = await self.ctx.add_cancel_key(
            session.session_id,
            fake_key,
            _CancelTarget(upstream.endpoint, upstream.pid, upstream.secret_key).sealed(),
        )
        session.framer.notify_pid(upstream.pid, fake_pid)
        self.codec.authenticated()
        await self.send(
            b"".join(
                [
                    pg.authentication_sasl_final(server_final),
                    pg.authentication_ok(),
                    *upstream.greeting,
                    pg.backend_key_data(fake_pid, fake_key),
                    upstream.ready,
                ]
            )
        )
        log.info(
            "postgres proxy: session %s open (grant %s, account %s)",
            session.session_id,
            ticket.grant_id,
            ticket.account,
        )
        return session

    async def _refuse(self, user: str) -> None:
        self.end_reason = "authentication failed"
        await self.fail(pg.authentication_failed_error(user))

    async def _upstream(self, session: _Session, startup: pg.StartupMessage) -> up.Upstream | None:
        ticket = session.ticket
        try:
            endpoint = up.Endpoint.from_options(ticket.target.options)
            params = up.startup_params(
                ticket.account, startup.params, startup.user, endpoint.dbname
            )
            return await up.login(endpoint, ticket.account, ticket.credential, params)
        except up.UpstreamRefused as exc:
            log.warning(
                "postgres proxy: target %s refused the vaulted credential of %s (SQLSTATE %s)",
                ticket.target.name,
                ticket.account,
                exc.sqlstate or "-",
            )
            self.end_reason = "upstream refused the credential"
            await self._record_quietly(
                session,
                "upstream_refused",
                {"target": ticket.target.name, "account": ticket.account, "sqlstate": exc.sqlstate},
            )
            await self.fail(
                pg.fatal_error(SQLSTATE_INVALID_AUTHORIZATION, UPSTREAM_REFUSED_MESSAGE)
            )
            return None
        except up.UpstreamFailed as exc:
            log.warning(
                "postgres proxy: login to target %s failed: %s (SQLSTATE %s)",
                ticket.target.name,
                exc.message,
                exc.sqlstate or "-",
            )
            self.end_reason = "upstream login failed"
            await self._record_quietly(
                session,
                "upstream_failed",
                {"target": ticket.target.name, "reason": exc.message, "sqlstate": exc.sqlstate},
            )
            sqlstate = _client_sqlstate(exc.sqlstate)
            suffix = f" (SQLSTATE {sqlstate})" if sqlstate != SQLSTATE_UNABLE_TO_CONNECT else ""
            await self.fail(
                pg.fatal_error(sqlstate, f"the target refused or failed the connection{suffix}")
            )
            return None

    async def _record_quietly(self, session: _Session, kind: str, data: dict[str, Any]) -> None:
        try:
            await self.ctx.record(session.session_id, kind, data)
        except Exception as exc:
            log.warning(
                "postgres proxy: session %s: cannot record %s (%s)",
                session.session_id,
                kind,
                type(exc).__name__,
            )

    # -- the relay (callbacks of the two wires) ----------------------------------------------

    def _start_relay(self, session: _Session) -> None:
        upstream = session.upstream
        assert upstream is not None
        relays = self.frontend.native_relays()
        if relays is not None and self.wire.detachable and upstream.wire.detachable:
            ssl_objects = (self.wire.tls, upstream.wire.tls)
            connections = native.tls_connections(ssl_objects)
            if connections is not None:
                self._start_native(session, relays, ssl_objects, connections)
                return
        self.relay = pg.FrontendRelay()
        early = b"".join(m.raw for m in self._pending) + self.codec.take_buffered()
        self._pending.clear()
        early += self.wire.relay_to(upstream.wire, self._from_client, self._client_ended)
        from_server = upstream.wire.relay_to(self.wire, self._from_server, self._server_ended)
        if from_server:
            self._from_server(from_server)
        if early:
            self._from_client(early)
        if self.wire.ended:
            self._end("client closed")
        elif upstream.wire.ended:
            self._end("upstream closed")

    def _start_native(
        self,
        session: _Session,
        relays: native.NativeRelays,
        ssl_objects: tuple[Any, Any],
        connections: tuple[Any, Any],
    ) -> None:
        """Hand the session's sockets to the native relay, with the TLS connection of each
        side that has one (:func:`~.native.tls_connections`)."""
        upstream = session.upstream
        assert upstream is not None
        # the engine drives them from now on; their Python objects live as long as it does
        self._native_tls = ssl_objects
        early = b"".join(m.raw for m in self._pending) + self.codec.take_buffered()
        self._pending.clear()
        client = self.wire.detach()
        server = upstream.wire.detach()
        # both were detachable just now
        assert client is not None
        assert server is not None
        self._native_closed = asyncio.get_running_loop().create_future()
        try:
            relays.add(
                session.session_id,
                self,
                (client[0], server[0]),
                (early + client[1], server[1]),
                self.ctx,
                session.framer.pids or (0, 0),
                connections,
            )
        except (RuntimeError, OSError, MemoryError, ValueError) as exc:  # sockets closed
            log.warning(
                "postgres proxy: session %s: the native relay did not take it (%s)",
                session.session_id,
                exc,
            )
            self._end("relay failed")
            return
        session.native = relays
        log.info(
            "postgres proxy: session %s relayed natively%s",
            session.session_id,
            " (TLS)" if ssl_objects != (None, None) else "",
        )

    # native relay events (see native.NativeSession)

    def native_unrecorded(self, exc: JitvaultError) -> None:
        session = self.session
        assert session is not None
        self._unrecorded(session, exc)

    def _record_forwarded(self, session: _Session, statements: RenderedStatements) -> None:
        # the statement has gone to the server already (even when the session is being cut
        # or is ending now), or its duration is known: the core keeps it whatever happens
        try:
            self.ctx.record_forwarded(((session.session_id, statements.count, statements.json),))
        except JitvaultError as exc:
            self._unrecorded(session, exc)

    def _unrecorded(self, session: _Session, exc: JitvaultError) -> None:
        """The core refused what the session sent (it keeps what was forwarded): fail closed,
        the session ends at once."""
        if session.cut_reason is not None or self._ending:
            return
        log.warning(
            "postgres proxy: session %s: cannot record (%s)",
            session.session_id,
            type(exc).__name__,
        )
        session.cut(RECORDING_REFUSED)

    def native_ended(self, reason: str, violation: pg.ProtocolViolation | None) -> None:
        if violation is not None:
            self._native_last = pg.protocol_violation_error(violation)
        self._end(reason)

    def native_closed(self) -> None:
        self._native_tls = (None, None)
        if self._native_closed is not None and not self._native_closed.done():
            self._native_closed.set_result(None)
        self._end("client closed")

    def _from_client(self, data: bytes) -> None:
        session, relay = self.session, self.relay
        assert session is not None
        assert session.upstream is not None
        assert relay is not None
        if self._ending or session.cut_reason is not None:
            return
        try:
            forward, surfaced = relay.feed(data)
        except pg.ProtocolViolation as exc:
            self.wire.write(pg.protocol_violation_error(exc))
            self._end("protocol violation")
            return
        terminated = False
        if surfaced:
            terminated = surfaced[-1][0] == b"X"  # nothing may follow it
            self.cycles.sent(surfaced, _now_us())
            try:
                self.ctx.record_statements(session.session_id, recorded_statements(surfaced))
            except JitvaultError as exc:
                # fail closed: what cannot be recorded is not run
                log.warning(
                    "postgres proxy: session %s: cannot record (%s)",
                    session.session_id,
                    type(exc).__name__,
                )
                session.cut(RECORDING_REFUSED)
                return
        if forward:
            session.upstream.wire.write(forward)
        if terminated:
            self._end("client closed")
        elif surfaced:
            backlog = self.ctx.recording_backlog()
            if backlog is not None:  # the recorder is behind: slow the client to its pace
                self.wire.hold_reading(backlog)

    def _from_server(self, data: bytes) -> None:
        session = self.session
        assert session is not None
        if self._ending or session.cut_reason is not None:
            return
        framer = session.framer
        try:
            chunk = framer.feed(data)
        except pg.ProtocolViolation:
            self._end("upstream protocol violation")
            return
        if framer.readies:
            done = self.cycles.ready(framer.readies, _now_us())
            framer.readies = 0
            if done:
                self._record_forwarded(session, statements_done(done))
        if chunk:
            self.wire.write(chunk)

    def _client_ended(self, how: str) -> None:
        self._end("client closed" if how == "closed" else "client connection lost")

    def _server_ended(self, how: str) -> None:
        self._end("upstream closed" if how == "closed" else "upstream connection lost")

    def _end(self, reason: str) -> None:
        if self._ending:
            return
        self._ending = True
        self.end_reason = reason
        self.frontend.spawn(self.finish())

    # -- the end --------------------------------------------------------------------------

    async def finish(self) -> None:
        """Close both sides; tell the core the session is over (exactly once)."""
        self._ending = True
        session = self.session
        if session is not None and session.native is not None:
            await self._finish_native(session, session.native)
        else:
            if session is not None and session.upstream is not None and session.cut_reason is None:
                session.upstream.close()
            await self.wire.close(_CLOSE_TIMEOUT_SECONDS)
        if session is not None and not session.reported:
            session.reported = True
            reason = session.cut_reason or self.end_reason
            try:
                await self.ctx.closed(session.session_id, reason)
            except Exception as exc:
                log.warning(
                    "postgres proxy: session %s: cannot record its end (%s)",
                    session.session_id,
                    type(exc).__name__,
                )
            log.info("postgres proxy: session %s ended (%s)", session.session_id, reason)

    async def _finish_native(self, session: _Session, relays: native.NativeRelays) -> None:
        closed = self._native_closed
        assert closed is not None
        if session.cut_reason is None:  # else cut asked the engine to close already
            relays.close(session.session_id, self._native_last, b"", LINGER_SECONDS)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(closed), _CLOSE_TIMEOUT_SECONDS + 1)


def _client_sqlstate(sqlstate: str | None) -> str:
    """The target's SQLSTATE when it is one (and not an auth failure's), else 08001."""
    if (
        sqlstate is not None
        and len(sqlstate) == 5
        and all(c.isdigit() or "A" <= c <= "Z" for c in sqlstate)
        and not sqlstate.startswith("28")
    ):
        return sqlstate
    return SQLSTATE_UNABLE_TO_CONNECT


def _open_refusal(exc: JitvaultError) -> bytes:
    """What the client hears when the core does not open a session for a proven token."""
    if exc.code == "too_many_sessions":
        return pg.fatal_error(
            SQLSTATE_TOO_MANY_CONNECTIONS, "too many connections for this access grant"
        )
    if isinstance(exc, Unavailable):
        return pg.fatal_error(
            SQLSTATE_CANNOT_CONNECT_NOW, "the access broker cannot open sessions now"
        )
    return pg.fatal_error(SQLSTATE_CONNECTION_FAILURE, f"the session cannot open: {exc.message}")


__all__ = ["HANDSHAKE_TIMEOUT_SECONDS", "BackendFramer", "PostgresFrontend"]

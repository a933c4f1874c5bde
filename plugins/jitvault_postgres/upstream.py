"""The proxy's client side: log in to the target as the vaulted account.

:func:`login` opens a connection to the target of a :class:`~jitvault.plugin_api.SessionTicket`,
negotiates TLS as the target's ``sslmode`` says, sends a StartupMessage for the ticket's account
and answers the server's authentication request (SCRAM-SHA-256, MD5 or cleartext) with the
vaulted credential, revealed only at the line that builds the message. It returns once the
server is ready for queries, with what the proxy passes on to its client (ParameterStatus
messages) and what it keeps (the real cancel key). The connection is a :class:`~.wire.Wire`, which
the relay takes over afterwards. The SCRAM key derivation (PBKDF2, about a millisecond) runs in a
worker thread, off the event loop that relays every other session.

Errors say what failed and the server's SQLSTATE, never the server's message text (it can echo
what the client sent) and never a credential: :class:`UpstreamRefused` when the server refused
the credential, :class:`UpstreamFailed` for anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

from jitvault.domain import Sensitive
from jitvault.errors import JitvaultError
from jitvault.plugin_api.scram import (
    MECHANISM,
    ScramClient,
    ScramMalformed,
    md5_password,
)
from jitvault_postgres import protocol as pg
from jitvault_postgres.wire import Wire, connect

#: client startup parameters passed upstream as they are: they set session formatting only.
#: ``options`` (any GUC, e.g. ``-c role=...``) and ``replication`` are never passed on.
SAFE_CLIENT_PARAMS = (
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
)
APPLICATION_PREFIX = "jitvault:"
_READ_CHUNK = 65536
CANCEL_TIMEOUT_SECONDS = 2.0


class UpstreamError(JitvaultError):
    """The target could not be logged in to; ``sqlstate`` is the server's code, if it sent one."""

    code = "upstream_error"

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class UpstreamRefused(UpstreamError):
    """The target refused the vaulted credential (SQLSTATE class 28, or a failed SCRAM proof)."""

    code = "upstream_refused"


class UpstreamFailed(UpstreamError):
    """Anything else: unreachable, TLS refused, protocol trouble, a non-auth FATAL error."""

    code = "upstream_failed"


@dataclass(frozen=True)
class Endpoint:
    """Where the target listens and how to protect the connection to it."""

    host: str
    port: int
    sslmode: str = "prefer"
    dbname: str = "postgres"

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> Endpoint:
        host = options.get("host")
        port = options.get("port", 5432)
        if not isinstance(host, str) or not host or not isinstance(port, int):
            raise UpstreamFailed("the target has no valid host and port")
        return cls(
            host=host,
            port=port,
            sslmode=str(options.get("sslmode", "prefer")),
            dbname=str(options.get("dbname", "postgres")),
        )


@dataclass
class Upstream:
    """A logged-in connection to the target, ready for queries."""

    endpoint: Endpoint
    wire: Wire
    pid: int
    secret_key: bytes = field(repr=False)
    #: what the client is told after AuthenticationOk, in order (ParameterStatus, notices)
    greeting: list[bytes] = field(repr=False, default_factory=list)
    #: the ReadyForQuery that ended the login
    ready: bytes = field(repr=False, default=b"")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.wire.transport is not None:
                self.wire.transport.close()


def startup_params(
    account: str, client_params: Mapping[str, str], client_user: str, default_dbname: str
) -> dict[str, str]:
    """The StartupMessage parameters sent upstream for a client's StartupMessage parameters.

    The database is the one the client asked for; libpq sends the user name when none was
    given, and the connection user (``<account>.<token id>``) is no database, so then it is the
    target's own ``dbname``.
    """
    database = client_params.get("database") or ""
    if not database or database == client_user:
        database = default_dbname
    params = {"user": account, "database": database}
    app = client_params.get("application_name", "")
    params["application_name"] = f"{APPLICATION_PREFIX}{app}"[:63]
    for name in SAFE_CLIENT_PARAMS:
        if name in client_params:
            params[name] = client_params[name]
    return params


def _tls_context(sslmode: str) -> ssl.SSLContext:
    if sslmode in ("verify-ca", "verify-full"):
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ctx.check_hostname = sslmode == "verify-full"
        return ctx
    # prefer / require: encryption without authentication of the server, as libpq does
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class _Conversation:
    """Reads backend messages from the wire through the sans-IO reader."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.codec = pg.BackendReader(passthrough=())
        self._pending: list[pg.Message] = []

    async def next(self) -> pg.Message:
        while not self._pending:
            data = await self.wire.read()
            if not data:
                raise UpstreamFailed("the target closed the connection during login")
            try:
                self._pending.extend(self.codec.feed(data))
            except pg.ProtocolViolation as exc:
                raise UpstreamFailed(f"the target broke the protocol: {exc.message}") from None
        return self._pending.pop(0)

    async def send(self, data: bytes) -> None:
        await self.wire.send(data)

    @property
    def leftover(self) -> bool:
        return bool(self._pending) or self.codec.buffered > 0


async def _negotiate_tls(endpoint: Endpoint, wire: Wire) -> None:
    if endpoint.sslmode == "disable":
        return
    await wire.send(pg.ssl_request())
    codec = pg.BackendReader(passthrough=())
    codec.expect_encryption_answer()
    answer = await wire.read()
    if not answer:
        raise UpstreamFailed("the target closed the connection at the TLS request")
    try:
        messages = codec.feed(answer)
    except pg.ProtocolViolation as exc:
        raise UpstreamFailed(f"the target broke the protocol: {exc.message}") from None
    first = messages[0] if messages else None
    accepted = isinstance(first, pg.SSLAnswer) and first.accepted
    if not accepted:
        if endpoint.sslmode != "prefer" or not isinstance(first, pg.SSLAnswer):
            raise UpstreamFailed(f"the target does not offer TLS (sslmode={endpoint.sslmode})")
        return
    try:
        await wire.start_tls(
            _tls_context(endpoint.sslmode),
            server_side=False,
            server_hostname=endpoint.host if endpoint.sslmode == "verify-full" else None,
        )
    except (ssl.SSLError, ssl.CertificateError) as exc:
        # the reason is the verification failure, not a secret
        raise UpstreamFailed(f"TLS to the target failed: {exc.reason or 'handshake'}") from None


async def _authenticate(conv: _Conversation, account: str, credential: Sensitive[str]) -> None:
    """Answer the server's authentication requests until AuthenticationOk."""
    scram: ScramClient | None = None
    while True:
        message = await conv.next()
        match message:
            case pg.AuthenticationOk():
                return
            case pg.AuthenticationSASL(mechanisms=mechanisms):
                if MECHANISM not in mechanisms:
                    raise UpstreamFailed("the target offers no SASL mechanism we speak")
                scram = ScramClient(credential)
                await conv.send(pg.sasl_initial_response(MECHANISM, scram.first_message()))
            case pg.AuthenticationSASLContinue(data=data) if scram is not None:
                # PBKDF2, where the password's keys for this salt are not cached yet, in a
                # thread: the loop relays every other session meanwhile
                final = scram.handle_server_first_cached(data)
                if final is None:
                    final = await asyncio.to_thread(scram.handle_server_first, data)
                await conv.send(pg.sasl_response(final))
            case pg.AuthenticationSASLFinal(data=data) if scram is not None:
                scram.verify_server_final(data)
            case pg.AuthenticationMD5Password(salt=salt):
                await conv.send(pg.password_message(md5_password(account, credential, salt)))
            case pg.AuthenticationCleartextPassword():
                await conv.send(pg.password_message(credential))
            case pg.AuthenticationOther(method=method):
                raise UpstreamFailed(f"the target asks for authentication method {method}")
            case pg.ErrorResponse(sqlstate=sqlstate):
                if sqlstate.startswith("28"):
                    raise UpstreamRefused(
                        "the target refused the vaulted credential", sqlstate=sqlstate
                    )
                raise UpstreamFailed("the target refused the connection", sqlstate=sqlstate)
            case pg.NegotiateProtocolVersion() | pg.NoticeResponse():
                continue
            case _:
                raise UpstreamFailed("the target sent an unexpected message during login")


async def login(
    endpoint: Endpoint,
    account: str,
    credential: Sensitive[str],
    params: Mapping[str, str],
    *,
    connect_timeout: float = 10.0,
) -> Upstream:
    """Connect and log in as ``account``; the caller bounds the whole login in time."""
    try:
        wire = await asyncio.wait_for(connect(endpoint.host, endpoint.port), connect_timeout)
    except (OSError, TimeoutError) as exc:
        raise UpstreamFailed(
            f"cannot reach the target at {endpoint.host}:{endpoint.port} ({type(exc).__name__})"
        ) from None
    try:
        await _negotiate_tls(endpoint, wire)
        conv = _Conversation(wire)
        await conv.send(pg.startup_message(params))
        try:
            await _authenticate(conv, account, credential)
        except ScramMalformed:
            raise UpstreamFailed("the target's SCRAM messages are malformed") from None
        except JitvaultError as exc:
            if isinstance(exc, UpstreamError):
                raise
            # ScramAuthFailed: wrong credential (server said e=...) or a server without it
            raise UpstreamRefused("the target refused the vaulted credential") from None
        greeting: list[bytes] = []
        key: pg.BackendKeyData | None = None
        while True:
            message = await conv.next()
            match message:
                case pg.ReadyForQuery():
                    ready = message.raw
                    break
                case pg.BackendKeyData():
                    key = message
                case pg.ParameterStatus() | pg.NoticeResponse():
                    greeting.append(message.raw)
                case pg.ErrorResponse(sqlstate=sqlstate):
                    raise UpstreamFailed("the target refused the connection", sqlstate=sqlstate)
                case _:
                    raise UpstreamFailed("the target sent an unexpected message after login")
        if conv.leftover:
            raise UpstreamFailed("the target sent data before it was asked anything")
        if key is None:
            raise UpstreamFailed("the target sent no cancel key")
        return Upstream(endpoint, wire, key.pid, key.secret_key, greeting, ready)
    except OSError as exc:
        wire.abort()
        raise UpstreamFailed(
            f"the connection to the target failed ({type(exc).__name__})"
        ) from None
    except BaseException:
        wire.abort()
        raise


async def send_cancel(endpoint: Endpoint, pid: int, secret_key: bytes) -> None:
    """Ask the target to cancel what backend ``pid`` runs (a fresh connection, as libpq does).

    Plain TCP: a cancel request carries no credential, and the server reads it before any
    authentication or pg_hba rule. Waits (bounded) for the server to close the connection.
    """
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(CANCEL_TIMEOUT_SECONDS):
            reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
            writer.write(pg.cancel_request(pid, secret_key))
            await writer.drain()
            await reader.read(1)
    except (OSError, TimeoutError):
        pass
    finally:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()


__all__ = [
    "APPLICATION_PREFIX",
    "SAFE_CLIENT_PARAMS",
    "Endpoint",
    "Upstream",
    "UpstreamError",
    "UpstreamFailed",
    "UpstreamRefused",
    "login",
    "send_cancel",
    "startup_params",
]

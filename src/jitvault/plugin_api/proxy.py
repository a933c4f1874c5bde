"""The session-proxy contract between the core and a protocol front end (a plugin).

The core owns listeners, tokens, grants, users' SSH keys, the session registry and the recording
sink; it knows no protocol. A front end owns one protocol: it speaks to the client, asks the core
to authenticate the client's session token (or registered public key), logs in upstream with the
vaulted credential it is handed (revealing it only at the line that sends it), relays, and
reports what to record. The core cuts a session
through its :class:`SessionHandle` when the grant ends or is revoked, on whichever node holds it.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from jitvault.domain import Sensitive
from jitvault.plugin_api.contracts import TargetAccess


@dataclass(frozen=True, slots=True)
class RenderedStatements:
    """Statements of one session that arrived together, already rendered as the core records
    them (a relay in native code renders off the Python side): ``json`` is ``count`` JSON
    objects, comma-separated, each exactly as :func:`render_statement` gives it (ASCII, so
    they cannot break out of the array they are stored in). Among them may be the durations of
    statements recorded before, as :func:`statements_done` renders them (each counts in
    ``count``), and ``{"ago":microseconds}`` objects (not counted): the statements after one
    were sent that long before they are recorded (a relay that hands them over late says when
    they were sent)."""

    count: int
    json: bytes


def render_statement(kind: str, text: bytes | None, name: bytes = b"") -> bytes:
    """One recorded statement's JSON object: ``{"kind":kind,"text":text}``, with ``"name"``
    between them when the statement has one (a prepared statement's), and no ``"text"`` when
    ``text`` is None (kind ``execute``: a prepared statement run again, by its name, which is
    empty for the unnamed statement). Both are
    decoded from UTF-8 with ``"replace"``; keys sorted, ASCII, no spaces: the form a relay in
    native code writes too."""
    data = {"kind": kind}
    if name or text is None:
        data["name"] = name.decode("utf-8", "replace")
    if text is not None:
        data["text"] = text.decode("utf-8", "replace")
    return json.dumps(data, ensure_ascii=True, sort_keys=True, separators=(",", ":")).encode()


def statements_done(done: Sequence[tuple[int, int]]) -> RenderedStatements:
    """How long recorded statements ran, for :meth:`ProxyContext.record_forwarded`: for each
    ``(statements, microseconds)`` in order, the oldest ``statements`` of the session's recorded
    statements that have no duration yet ran for ``microseconds`` (from the first of them being
    sent to the server's answer). Rendered as ``{"done":[statements,microseconds]}`` objects,
    the form a relay in native code writes too."""
    return RenderedStatements(
        len(done), ",".join(f'{{"done":[{int(n)},{int(us)}]}}' for n, us in done).encode()
    )


@dataclass(frozen=True)
class SessionTicket:
    """A client that is in: its session, grant, account and the credential to use upstream."""

    session_id: int
    grant_id: int
    user: str  # the jitvault user the grant belongs to
    account: str  # the account (role) to log in as upstream
    target: TargetAccess
    credential: Sensitive[str]
    expires_at: datetime
    #: the grant's policy rule allows port forwarding (SSH ``-L``); forbidden by default
    allow_forwarding: bool = False


@dataclass(frozen=True, slots=True)
class Cut:
    """Why the core cuts a live session: what its client is told, and whether the grant
    outlives the cut (then the client may connect again at once; else it must request access
    again)."""

    reason: str
    grant_lives: bool = False

    @property
    def hint(self) -> str | None:
        """What the client may do now, where the cut itself says it (the grant lives on)."""
        return CONNECT_AGAIN_HINT if self.grant_lives else None


#: what a client whose session was cut while its grant lives on is told it may do
CONNECT_AGAIN_HINT = "Connect again: the access grant is unchanged."
#: the cut of every live session of a node that stops (the grants stay live: their users may
#: connect again, to another node or after the restart)
NODE_STOPPING = Cut("the jitvault server is shutting down", grant_lives=True)
#: what a client refused by :meth:`ProxyContext.admit` is told, where its protocol can say it
TOO_MANY_LOGGING_IN = "too many connections are logging in to the proxy at once"
TRY_AGAIN_SHORTLY_HINT = "Try again in a few seconds."


class LoginPlace(Protocol):
    """A connection's place among the node's connections that have not logged in yet."""

    def release(self) -> None:
        """Give the place back: the client has logged in, or its connection has ended.
        Idempotent."""


class SessionHandle(Protocol):
    """What the core holds to cut a live session."""

    session_id: int

    async def close(self, cut: Cut) -> None:
        """Tell the client why (e.g. a FATAL error, with a hint that follows from
        ``cut.grant_lives``), close both sides. Idempotent."""


class ProxyContext(Protocol):
    """What the core offers a front end for one listener."""

    #: TLS for the client side (a certificate from config, or the self-signed one made at init)
    ssl_context: ssl.SSLContext | None
    #: a private directory (mode 0700) where the front end may keep its own files, e.g. the
    #: SSH proxy's host key
    state_dir: Path
    #: bind the listener with SO_REUSEPORT (``server.proxy_reuse_port``: several processes of
    #: the node share the port); False unless the operator opted in
    reuse_port: bool
    #: refuse a client that does not ask for TLS before it logs in
    #: (``server.pg_proxy_require_tls``; SSH is always encrypted)
    require_tls: bool

    def admit(self, source: str) -> LoginPlace | None:
        """A place for a new connection from ``source`` (its address) among the node's
        connections that have not logged in yet, which the core bounds in all and per address
        (``server.proxy_max_startups``, ``server.proxy_max_startups_per_source``). None: no
        place; the front end refuses the connection at once, before it reads from it, telling
        the client :data:`TOO_MANY_LOGGING_IN` where its protocol allows. The front end asks
        when the connection is made and releases the place once the client has logged in or
        the connection has ended, whichever comes first."""

    async def token_verifier(self, token_id: str, source: str) -> Sensitive[str] | None:
        """The SCRAM-SHA-256 verifier of a session token, or None if there is no such token.
        ``source``: the client's address (the core bounds the lookups in flight per source
        for clients that have proven nothing yet; so it does for ``open_with_token``,
        ``check_key`` and ``cancel_backend``).

        A front end that authenticates with SCRAM uses it before the client proves anything;
        for an unknown id it must still run the exchange with a dummy verifier and fail it,
        so that a client cannot tell unknown tokens from wrong ones.
        """

    async def open_verified(self, token_id: str, source: str) -> SessionTicket:
        """Open a session for a token whose possession was proven by SCRAM. Raises AuthError
        (any reason: say only "authentication failed") or Conflict (too many sessions)."""

    async def open_with_token(self, token: Sensitive[str], source: str) -> SessionTicket:
        """Open a session for a token sent in the clear (over TLS). Same errors."""

    async def check_key(self, account: str, grant_id: int, public_key: bytes, source: str) -> None:
        """May the holder of this public key (SSH wire format, RFC 4253) open a session of grant
        ``grant_id`` as ``account``? Yes if it returns: the key is registered to the grant's
        user, who is not disabled, and the grant is live. Raises AuthError (any reason: say only
        "authentication failed").

        It only checks: a front end asks it when a client offers a key, before the client has
        proven it holds the private key. The session opens with :meth:`open_with_key`.
        """

    async def open_with_key(
        self, account: str, grant_id: int, public_key: bytes, source: str
    ) -> SessionTicket:
        """Open a session for a registered key whose possession the front end has verified (the
        client's signature over the SSH session), checking everything :meth:`check_key` does
        again. Raises AuthError or Conflict (too many sessions)."""

    def register(self, handle: SessionHandle) -> None:
        """Put a live session in the registry, so that the core can cut it."""

    async def add_cancel_key(self, session_id: int, key: bytes, backend: Sensitive[bytes]) -> int:
        """Publish a live session's cancel key to every node of the deployment: until the
        session ends, :meth:`cancel_backend` with the returned id (a positive 31-bit number,
        unique among live sessions) and ``key`` gives ``backend`` back, on any node. The core
        seals ``backend`` (the front end's own description of the real backend) at rest."""

    async def cancel_backend(
        self, cancel_id: int, key: bytes, source: str
    ) -> Sensitive[bytes] | None:
        """The backend a live session published under ``cancel_id``, if ``key`` is its key;
        else None (no such session, or a wrong key: not told apart)."""

    def record_nowait(self, session_id: int, kind: str, data: dict[str, Any]) -> None:
        """Record an event of the session (e.g. a query text); encrypted at rest by the core.

        Queued, never waiting for the database (the core writes in batches; the session's
        events are stored before its end). Raises ``Unavailable`` when the event cannot be
        kept (the queue is full or the store refuses recordings): the front end must then end
        the session without relaying what it wanted to record (fail closed).
        """

    def record_statements(
        self,
        session_id: int,
        statements: Sequence[tuple[str, bytes]] | RenderedStatements,
    ) -> None:
        """Record statements the client sent, of one session and arrived together, as
        ``(style, text)`` pairs: each a ``query`` event with ``text`` (these bytes, decoded from
        UTF-8 by the core, off the relay's path) and ``kind`` = ``style``; one timestamp. Or
        already rendered (:class:`RenderedStatements`): recorded as they are, the same events.

        The relay's per-read call: it only queues the bytes. Same promise and refusals as
        :meth:`record_nowait`: all are queued, or none and the refusal is raised (what has
        already gone to the target is :meth:`record_forwarded`'s).
        """

    def record_forwarded(self, batch: Sequence[tuple[int, int, bytes]]) -> None:
        """Record rendered statements that have already gone to the target, or their
        durations (:func:`statements_done`), of one session or several: ``(session id, count,
        json)`` each, ``count`` and ``json`` as in :class:`RenderedStatements` (a relay in
        native code hands over every session it serves in one call). One timestamp. They ran,
        so all are queued whatever the refusal (what ran is recorded, kept and retried), then
        the refusal is raised: every session of the batch must end and forward nothing more."""

    def recording_backlog(self) -> Awaitable[None] | None:
        """None while the core stores recordings as fast as they come; else an awaitable done
        once it has caught up. A front end that gets one reads no more from the side whose
        traffic it records until then (backpressure), so that a fast client is slowed rather
        than cut for a full queue."""

    def recording_available(self) -> bool:
        """False while the core refuses new recordings (the store failed its last write): a
        relay that forwards before the core has its statements stops reading clients."""

    async def record(self, session_id: int, kind: str, data: dict[str, Any]) -> None:
        """:meth:`record_nowait` for coroutines (same promise: it does not wait for storage)."""

    async def closed(self, session_id: int, reason: str) -> None:
        """The session is over (client left, upstream closed, or cut): unregister and end it."""


class ProxyListener(Protocol):
    """A bound listener of one front end, as the core holds it."""

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful when 0 was asked for)."""

    def close(self) -> None:
        """Stop accepting new connections (live sessions are cut through their handles)."""

    def release(self) -> None:
        """The node stops, its live sessions cut: release what is left (threads, sockets)."""


class ProtocolFrontend(Protocol):
    """One protocol's server side. The core asks it to listen; it owns its sockets.

    A front end binds with whatever its protocol library wants (asyncio streams or Protocols,
    an SSH server library), on the core's event loop, and serves each client to its end: a
    misbehaving client ends its own connection, never the listener.
    """

    protocol: str  # "postgres", "ssh"

    async def listen(self, host: str, port: int, ctx: ProxyContext) -> ProxyListener:
        """Bind ``host:port`` and serve clients through ``ctx`` until closed."""


__all__ = [
    "CONNECT_AGAIN_HINT",
    "NODE_STOPPING",
    "TOO_MANY_LOGGING_IN",
    "TRY_AGAIN_SHORTLY_HINT",
    "Cut",
    "LoginPlace",
    "ProtocolFrontend",
    "ProxyContext",
    "ProxyListener",
    "RenderedStatements",
    "SessionHandle",
    "SessionTicket",
    "statements_done",
]

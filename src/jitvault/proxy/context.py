"""The core's side of the proxy contract, backed by a node's services."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from jitvault.domain import Sensitive
from jitvault.plugin_api import (
    LoginPlace,
    RenderedStatements,
    SessionHandle,
    SessionTicket,
    TargetAccess,
)
from jitvault.proxy.preauth import LoginPlaces, PreAuthLimit
from jitvault.proxy.recording import RecordingSink, RecordingUnavailable
from jitvault.proxy.registry import SessionRegistry
from jitvault.services import Node, sessions

log = logging.getLogger(__name__)

#: the end reason of a session whose login was given up while the store opened it
ABANDONED = "login abandoned"
#: how long a login that meets its grant's max_connections waits for the end of one of the
#: grant's sessions on this node whose client has just closed (see
#: :meth:`SessionRegistry.an_end_recorded`); a grant that is really full is refused this late
ENDING_WAIT_SECONDS = 1.0


class NodeProxyContext:
    """One per listener: what its front end may ask of the core."""

    def __init__(
        self,
        node: Node,
        registry: SessionRegistry,
        recordings: RecordingSink,
        protocol: str,
        ssl_context: ssl.SSLContext | None,
        preauth: PreAuthLimit,
        logging_in: LoginPlaces,
    ) -> None:
        self.node = node
        self.registry = registry
        self.recordings = recordings
        #: the node's bound on lookups for clients that have proven nothing yet
        self.preauth = preauth
        #: the node's bound on connections that have not logged in yet (every listener's)
        self.logging_in = logging_in
        self.protocol = protocol
        self.ssl_context = ssl_context
        #: sessions opened and not registered yet: their deadlines and grants
        self._opened: dict[int, tuple[datetime, int]] = {}
        #: ends of abandoned logins' sessions, in flight (a reference keeps each task alive)
        self._closing: set[asyncio.Future[bool]] = set()
        self.state_dir = node.settings.data_dir / "proxy" / protocol
        self.reuse_port = node.settings.server.proxy_reuse_port
        self.require_tls = node.settings.server.pg_proxy_require_tls
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def admit(self, source: str) -> LoginPlace | None:
        return self.logging_in.admit(source)

    async def token_verifier(self, token_id: str, source: str) -> Sensitive[str] | None:
        return await self.preauth.run(source, sessions.token_verifier, self.node, token_id)

    async def open_verified(self, token_id: str, source: str) -> SessionTicket:
        return await self._open(
            functools.partial(
                sessions.open_session_verified, self.node, token_id, self.protocol, source
            )
        )

    async def open_with_token(self, token: Sensitive[str], source: str) -> SessionTicket:
        return await self._open(
            functools.partial(sessions.open_session, self.node, token, self.protocol, source),
            unproven=source,  # this very lookup checks the token
        )

    async def check_key(self, account: str, grant_id: int, public_key: bytes, source: str) -> None:
        await self.preauth.run(
            source,
            sessions.check_session_key,
            self.node,
            account,
            grant_id,
            public_key,
            self.protocol,
            source,
        )

    async def open_with_key(
        self, account: str, grant_id: int, public_key: bytes, source: str
    ) -> SessionTicket:
        return await self._open(
            functools.partial(
                sessions.open_session_with_key,
                self.node,
                account,
                grant_id,
                public_key,
                self.protocol,
                source,
            )
        )

    async def _open(
        self, open_session: Callable[[], sessions.SessionTicket], unproven: str | None = None
    ) -> SessionTicket:
        """Open a session; when the grant's places are all taken but one of its sessions here
        is ending, once more after that end is recorded. ``unproven``: the source address of
        a client that has proven nothing yet (the open checks its token), whose lookups are
        bounded per source."""
        ends_before = self.registry.ends_recorded
        try:
            return await self._open_once(open_session, unproven)
        except sessions.TooManySessions as exc:
            full = exc
        try:
            async with asyncio.timeout(ENDING_WAIT_SECONDS):
                ended = await self.registry.an_end_recorded(full.grant_id, since=ends_before)
        except TimeoutError:
            ended = False
        if not ended:
            raise full
        return await self._open_once(open_session, unproven)

    async def _open_once(
        self, open_session: Callable[[], sessions.SessionTicket], unproven: str | None
    ) -> SessionTicket:
        """Open a session in the store and read what its proxy needs (one thread, one hop)
        and hand out its ticket. A login given up meanwhile (its timeout, the client gone)
        cannot stop the thread: the session it opens is then ended as soon as it is open, so
        no live session is left that nobody holds (it would count against
        ``max_connections`` until the grant ends)."""
        async with self.preauth.place(unproven) as place:
            opening = asyncio.ensure_future(
                asyncio.to_thread(self._open_with_material, open_session)
            )
            place.hold_until(opening)
            try:
                opened, material = await asyncio.shield(opening)
            except asyncio.CancelledError:
                opening.add_done_callback(self._end_abandoned)
                raise
        grant = opened.grant
        self._opened[opened.session_id] = (grant.expires_at, grant.id)
        return SessionTicket(
            session_id=opened.session_id,
            grant_id=grant.id,
            user=grant.user,
            account=material.account,
            target=TargetAccess(name=material.target.name, options=material.target.options),
            credential=material.credential,
            expires_at=grant.expires_at,
            allow_forwarding=material.allow_forwarding,
        )

    def _open_with_material(
        self, open_session: Callable[[], sessions.SessionTicket]
    ) -> tuple[sessions.SessionTicket, sessions.ProxyMaterial]:
        """(In a worker thread.) The opened session and its credential; a session whose
        credential cannot be handed out is ended again (a session that never got going does
        not end an --end-on-disconnect grant)."""
        opened = open_session()
        try:
            return opened, sessions.proxy_material(self.node, opened)
        except BaseException:
            sessions.close_session(self.node, opened.session_id, "no credential", False)
            raise

    def _end_abandoned(
        self, opening: asyncio.Future[tuple[sessions.SessionTicket, sessions.ProxyMaterial]]
    ) -> None:
        if opening.cancelled() or opening.exception() is not None:
            return  # nothing was opened (or what was has been ended again)
        closing = asyncio.ensure_future(
            asyncio.to_thread(
                sessions.close_session,
                self.node,
                opening.result()[0].session_id,
                ABANDONED,
                False,  # a session that never got going does not end its grant
            )
        )
        self._closing.add(closing)
        closing.add_done_callback(self._abandoned_ended)

    def _abandoned_ended(self, closing: asyncio.Future[bool]) -> None:
        self._closing.discard(closing)
        if not closing.cancelled() and closing.exception() is not None:
            # the store is down: the session stays live until its grant ends (and is cut then)
            log.warning(
                "proxy: the session of an abandoned login could not be ended (%s)",
                type(closing.exception()).__name__,
            )

    def register(self, handle: SessionHandle) -> None:
        expires, grant_id = self._opened.pop(handle.session_id)
        self.registry.add(handle, expires, grant_id)

    async def add_cancel_key(self, session_id: int, key: bytes, backend: Sensitive[bytes]) -> int:
        return await asyncio.to_thread(sessions.add_cancel_key, self.node, session_id, key, backend)

    async def cancel_backend(
        self, cancel_id: int, key: bytes, source: str
    ) -> Sensitive[bytes] | None:
        return await self.preauth.run(source, sessions.cancel_backend, self.node, cancel_id, key)

    def record_nowait(self, session_id: int, kind: str, data: dict[str, Any]) -> None:
        self.recordings.add(session_id, kind, data)

    def record_statements(
        self,
        session_id: int,
        statements: Sequence[tuple[str, bytes]] | RenderedStatements,
    ) -> None:
        self.recordings.add_statements(session_id, statements)

    def record_forwarded(self, batch: Sequence[tuple[int, int, bytes]]) -> None:
        self.recordings.add_forwarded(batch)

    def recording_backlog(self) -> Awaitable[None] | None:
        return self.recordings.backlog()

    def recording_available(self) -> bool:
        return self.recordings.available

    async def record(self, session_id: int, kind: str, data: dict[str, Any]) -> None:
        self.recordings.add(session_id, kind, data)

    async def closed(self, session_id: int, reason: str) -> None:
        self.registry.remove(session_id)
        self._opened.pop(session_id, None)
        try:
            # the session's events land before its end; if the store refuses them, that is
            # logged, and they stay queued and are retried
            with contextlib.suppress(RecordingUnavailable):
                await self.recordings.flush()
            # a session the node cut because it stops does not end an --end-on-disconnect
            # grant: its user did not disconnect, and may connect again (another node, or
            # this one restarted)
            ends_grant = not self.registry.grant_lives(session_id)
            await asyncio.to_thread(
                sessions.close_session, self.node, session_id, reason, ends_grant
            )
        finally:
            self.registry.ended(session_id)


__all__ = ["NodeProxyContext"]

"""The SSH session proxy: an asyncssh server in front of the targets.

One :class:`SshFrontend` serves every client of the ssh listener, on the core's event loop:

1. the handshake with the proxy's own Ed25519 host key (kept in the core's state directory,
   mode 0600); handshake and authentication must finish within :data:`LOGIN_TIMEOUT_SECONDS`;
2. authentication: the user name is ``<account>.<grant id>``, and either the password (or the
   one keyboard-interactive answer) is the grant's session token, or the client signs with an
   SSH key registered to the grant's user; the core checks both. ``none`` and empty passwords
   are refused, and every refusal looks the same;
3. the upstream login as the grant's account with the vaulted credential (:mod:`.connect`,
   which checks the pinned host key). A token login succeeds only once it is done; a key login
   succeeds when the signature is verified, and its session opens right after (channels wait
   for it), or the connection ends with the reason. Nothing is relayed before the grant is
   checked and the target has let the account in;
4. the relay (:class:`_ClientChannel`): pty shells, exec, the sftp subsystem and, when the
   grant's policy allows it, ``-L`` forwarding, each to a channel of the upstream connection;
   what is allowed and what is recorded is decided in :mod:`.relay`;
5. the cut (:meth:`_Session.close`): a message on every channel's stderr, then every channel and
   both connections closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, Protocol

import asyncssh

from jitvault.domain import Sensitive
from jitvault.errors import AuthError, JitvaultError
from jitvault.plugin_api import Cut, LoginPlace, ProxyContext, ProxyListener, SessionTicket
from jitvault_ssh import aead, relay
from jitvault_ssh import connect as upstream_login

log = logging.getLogger(__name__)

#: from the TCP connection to the end of authentication (includes the upstream login)
LOGIN_TIMEOUT_SECONDS = 10.0
HOST_KEY_FILE = "ssh_host_ed25519_key"
#: a cut session's client connection is closed this long after its channels were told why,
#: whatever the client does (the promise is 2 s from the grant's end)
_CUT_GRACE_SECONDS = 0.5
_EXIT_CUT = 255
RECORDING_REFUSED = "the session recording cannot be stored"
#: why a side of a channel is not read (see _ReadGate)
_OPENING = "the upstream channel is not open yet"
_PEER_FULL = "the other side takes no more for now"
#: towards the target, AES-GCM first (AES-NI makes it the fastest on x86-64 servers);
#: the others as asyncssh offers them
UPSTREAM_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)


def proxy_host_key(state_dir: Path) -> asyncssh.SSHKey:
    """The proxy's own host key: made once (Ed25519, mode 0600), then read back."""
    path = state_dir / HOST_KEY_FILE
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment="jitvault-ssh-proxy")
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key("openssh"))
        os.replace(path.with_suffix(".tmp"), path)
    return asyncssh.read_private_key(str(path))


class _Listener:
    def __init__(self, server: asyncssh.SSHAcceptor) -> None:
        self._server = server

    @property
    def port(self) -> int:
        return int(self._server.get_port())

    def close(self) -> None:
        self._server.close()

    def release(self) -> None:
        """Nothing is left: each connection ended with its session."""


class SshFrontend:
    """The ssh kind's :class:`~jitvault.plugin_api.ProtocolFrontend` (one per process)."""

    protocol = "ssh"

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        aead.install()  # half the packets, one AES-GCM object per key (see aead.py)

    async def listen(self, host: str, port: int, ctx: ProxyContext) -> ProxyListener:
        key = proxy_host_key(ctx.state_dir)
        server = await asyncssh.create_server(
            lambda: _Server(self, ctx),
            host,
            port,
            server_host_keys=[key],
            login_timeout=LOGIN_TIMEOUT_SECONDS,
            keepalive_interval=60,
            encoding=None,
            line_editor=False,
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
            config=[],
            reuse_address=True,
            reuse_port=ctx.reuse_port or None,
        )
        return _Listener(server)

    def spawn(self, work: Any) -> None:
        """Run a coroutine in the background, keeping a reference until it is done."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Session:
    """A live session: the core's :class:`SessionHandle`, both connections, its channels."""

    def __init__(self, frontend: SshFrontend, ctx: ProxyContext, ticket: SessionTicket) -> None:
        self.session_id = ticket.session_id
        self.frontend = frontend
        self.ctx = ctx
        self.ticket = ticket
        self.upstream: asyncssh.SSHClientConnection | None = None
        self.client: asyncssh.SSHServerConnection | None = None
        self.channels: set[_ClientChannel] = set()
        self.cut_reason: str | None = None
        self.finished = False
        self._next_channel = 0

    def record(self, kind: str, data: dict[str, Any]) -> bool:
        """Queue an event for the core's recording sink. False if the core cannot keep it: the
        session is then being cut, and what wanted recording must not be relayed."""
        try:
            self.ctx.record_nowait(self.session_id, kind, data)
        except Exception as exc:
            log.warning(
                "ssh proxy: session %s: cannot record (%s); cutting it",
                self.session_id,
                type(exc).__name__,
            )
            self.frontend.spawn(self.cut(RECORDING_REFUSED))
            return False
        return True

    def channel_number(self) -> int:
        self._next_channel += 1
        return self._next_channel

    async def close(self, cut: Cut) -> None:
        """The core cuts the session (SessionHandle): see :meth:`cut`."""
        await self.cut(cut.reason, cut.hint)

    async def cut(self, reason: str, hint: str | None = None) -> None:
        """Tell the client why (and what it may do now) on every channel's stderr, then close
        everything. Idempotent."""
        if self.cut_reason is not None or self.finished:
            return
        self.cut_reason = reason
        log.info("ssh proxy: session %s cut (%s)", self.session_id, reason)
        for channel in list(self.channels):
            channel.cut(reason, hint)
        if self.upstream is not None:
            self.upstream.close()
        client = self.client
        if client is not None:
            loop = asyncio.get_running_loop()
            loop.call_later(_CUT_GRACE_SECONDS, client.close)

    async def finish(self, reason: str) -> None:
        """The client connection is gone: close the upstream, queue the last recorded output,
        tell the core (exactly once; the core stores a session's events before its end)."""
        if self.finished:
            return
        self.finished = True
        if self.upstream is not None:
            self.upstream.close()
        for channel in list(self.channels):
            channel.flush_recording()
        why = self.cut_reason or reason
        try:
            await self.ctx.closed(self.session_id, why)
        except Exception as exc:
            log.warning(
                "ssh proxy: session %s: cannot record its end (%s)",
                self.session_id,
                type(exc).__name__,
            )
        log.info("ssh proxy: session %s ended (%s)", self.session_id, why)


class _Server(asyncssh.SSHServer):
    """One client connection: authentication, then the channels it opens."""

    def __init__(self, frontend: SshFrontend, ctx: ProxyContext) -> None:
        self.frontend = frontend
        self.ctx = ctx
        self.conn: asyncssh.SSHServerConnection | None = None
        self.source = ""
        self.session: _Session | None = None
        self.lost = False
        #: the login name and public key the last validate_public_key accepted (the client has
        #: not proven it holds the private key until asyncssh says authentication completed)
        self._offered_key: tuple[relay.LoginName, bytes] | None = None
        #: a key login's session opening (after authentication): channel opens wait for it
        self._opening: asyncio.Future[None] | None = None
        #: why that session did not open (what a channel waiting for it is told)
        self._refusal = "Session refused"
        #: its place among the node's connections logging in (given back once authenticated)
        self._logging_in: LoginPlace | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername")
        self.source = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self._logging_in = self.ctx.admit(self.source)
        if self._logging_in is None:
            # no place: closed before the version exchange, as sshd does over MaxStartups
            # (SSH has no way to say why before it); the core logs the refusals
            conn.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._logged_in()
        if self.session is not None:
            self.frontend.spawn(self.session.finish("client closed"))

    # -- authentication -------------------------------------------------------------------

    def begin_auth(self, username: str) -> bool:
        return True  # always: "none" never lets anyone in

    def password_auth_supported(self) -> bool:
        return True

    def kbdint_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def get_kbdint_challenge(
        self, username: str, lang: str, submethods: str
    ) -> tuple[str, str, str, list[tuple[str, bool]]]:
        return "", "", "", [("Password (jitvault session token): ", False)]

    async def validate_kbdint_response(self, username: str, responses: Sequence[str]) -> bool:
        if len(responses) != 1:
            return False
        return await self.validate_password(username, responses[0])

    async def validate_password(self, username: str, password: str) -> bool:
        self._offered_key = None  # whatever key was offered before, this login is not by key
        if self.session is not None:
            return False  # one session per connection
        name = relay.parse_login_name(username)
        if name is None or not password:
            return False
        # the token is checked and the session opened (upstream login included) before
        # authentication succeeds: a refused session is a refused login
        refusal = await self._start_session(
            self.ctx.open_with_token(Sensitive(password), self.source), name
        )
        if refusal:
            self._refuse_with(refusal)
        return refusal is None

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # asyncssh asks this twice for a key the client uses: when the client offers it (no
        # signature yet), and again when the client signs with it; it verifies the signature
        # itself, only after this returned True. So this only checks (the core writes nothing
        # but the audit of a refusal) and remembers what it accepted: a session opened here
        # could be opened by anyone holding the public key alone. The session opens in
        # auth_completed, which asyncssh calls only once the signature is verified.
        self._offered_key = None
        if self.session is not None:
            return False
        name = relay.parse_login_name(username)
        if name is None:
            return False
        blob = key.public_data
        try:
            await self.ctx.check_key(name.account, name.grant_id, blob, self.source)
        except JitvaultError as exc:  # AuthError, or the store is unavailable: refused alike
            if not isinstance(exc, AuthError):
                log.warning("ssh proxy: a key login could not be checked: %s", exc.message)
            return False
        self._offered_key = (name, blob)
        return True

    def _logged_in(self) -> None:
        if self._logging_in is not None:
            self._logging_in.release()
            self._logging_in = None

    async def auth_completed(self) -> None:
        self._logged_in()
        offered, self._offered_key = self._offered_key, None
        if self.session is not None or offered is None:
            return  # a token login: its session is open already
        # a key login: the client proved it holds the key. The core checks everything again
        # under the grant's lock and opens the session; asyncssh has already told the client
        # it is in, so a refusal now ends the connection with the reason. Channels the client
        # opens meanwhile wait (session_requested) and are relayed once the upstream is in.
        name, blob = offered
        loop = asyncio.get_running_loop()
        opening: asyncio.Future[None] = loop.create_future()
        self._opening = opening
        try:
            refusal = await self._start_session(
                self.ctx.open_with_key(name.account, name.grant_id, blob, self.source), name
            )
            if refusal is not None:
                self._refusal = refusal or "jitvault: access refused"
                self._refuse_with(self._refusal, after_auth=True)
        finally:
            # after the disconnect _refuse_with scheduled: the client reads the reason there
            # (a failed channel open first would end it without saying why)
            loop.call_soon(opening.set_result, None)

    async def _start_session(
        self, opening: Awaitable[SessionTicket], name: relay.LoginName
    ) -> str | None:
        """Open the session (the core) and log in to the target as its account. None when
        both are done; else what to tell the client ("" for nothing: a refused login)."""
        try:
            ticket = await opening
        except AuthError:
            return ""
        except JitvaultError as exc:
            return f"jitvault: the session cannot open: {exc.message}"
        if ticket.account != name.account or ticket.grant_id != name.grant_id:
            await self.ctx.closed(ticket.session_id, "user name does not match the token")
            return ""
        session = _Session(self.frontend, self.ctx, ticket)
        self.session = session
        session.client = self.conn
        self.ctx.register(session)
        if self.lost:  # the client left while the core opened the session
            await session.finish("client closed")
            return "jitvault: client closed"
        try:
            upstream = await upstream_login.connect(
                ticket.target,
                ticket.account,
                ticket.credential,
                encryption_algs=list(UPSTREAM_CIPHERS),
                client_factory=lambda: _TargetConnection(session),
            )
        except JitvaultError as exc:  # TargetRejected, or options that no longer validate
            log.warning("ssh proxy: session %s: upstream login failed: %s", ticket.session_id, exc)
            session.record("upstream_failed", {"target": ticket.target.name, "reason": exc.message})
            session.cut_reason = f"upstream login failed: {exc.message}"
            return f"jitvault: {exc.message}"
        if session.finished or session.cut_reason is not None:  # gone or cut meanwhile
            upstream.close()
            return f"jitvault: {session.cut_reason or 'client closed'}"
        session.upstream = upstream
        log.info(
            "ssh proxy: session %s open (grant %s, account %s)",
            ticket.session_id,
            ticket.grant_id,
            ticket.account,
        )
        return None

    def _refuse_with(self, message: str, after_auth: bool = False) -> None:
        """End a connection whose login was good but whose session cannot be: say why (in an
        auth banner during authentication, in the disconnect message in any case)."""
        conn = self.conn
        if conn is None:
            return
        if not after_auth:
            with contextlib.suppress(Exception):
                conn.send_auth_banner(message + "\r\n")
        code = (
            asyncssh.DISC_BY_APPLICATION
            if after_auth
            else asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE
        )
        asyncio.get_running_loop().call_soon(conn.disconnect, code, message)

    # -- channels -------------------------------------------------------------------------

    def _live_session(self) -> _Session | None:
        session = self.session
        if session is None or session.upstream is None or session.cut_reason is not None:
            return None
        return session

    def _still_opening(self) -> bool:
        return self._opening is not None and not self._opening.done()

    def session_requested(self) -> Any:
        if self._still_opening() and self.conn is not None:
            # asyncssh confirms the channel when this coroutine returns (the client sends
            # nothing on it before)
            return self.conn.create_server_channel(), self._channel_once_open()
        session = self._live_session()
        return False if session is None else _ClientChannel(session)

    async def _channel_once_open(self) -> _ClientChannel:
        assert self._opening is not None
        await self._opening
        session = self._live_session()
        if session is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, self._refusal)
        return _ClientChannel(session)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        if self._still_opening() and self.conn is not None:
            return self.conn.create_tcp_channel(), self._forward_once_open(dest_host, dest_port)
        session = self._live_session()
        if session is None:
            return False
        return self._forward_through(session, dest_host, dest_port)

    async def _forward_once_open(self, dest_host: str, dest_port: int) -> Any:
        assert self._opening is not None
        assert self.conn is not None
        await self._opening
        session = self._live_session()
        if session is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, self._refusal)
        upstream = self._forward_through(session, dest_host, dest_port)
        try:
            return await self.conn.forward_tunneled_connection(upstream, dest_host, dest_port)
        except (asyncssh.Error, OSError) as exc:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, "the target refused the connection"
            ) from exc

    def _forward_through(
        self, session: _Session, dest_host: str, dest_port: int
    ) -> asyncssh.SSHClientConnection:
        """The upstream connection to tunnel a ``-L`` forward through, if the grant's policy
        allows it and the open is recorded; else ChannelOpenError."""
        assert session.upstream is not None
        allowed = relay.forwarding_allowed(session.ticket.allow_forwarding, dest_host, dest_port)
        recorded = session.record(
            "forward", {"host": dest_host, "port": dest_port, "allowed": allowed}
        )
        if not recorded:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, RECORDING_REFUSED)
        if not allowed:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                "jitvault: port forwarding is not allowed by this grant's policy",
            )
        return session.upstream  # asyncssh tunnels the channel through the target

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False  # -R (remote forwarding) is never relayed


class _TargetConnection(asyncssh.SSHClient):
    """The upstream connection's events: if the target drops it, the client is told and let go
    (a session with no target behind it would only hang)."""

    def __init__(self, session: _Session) -> None:
        self.session = session

    def connection_lost(self, exc: Exception | None) -> None:
        session = self.session
        if session.upstream is not None and not session.finished and session.cut_reason is None:
            session.frontend.spawn(session.cut("the target closed the connection"))


class _UpstreamChannel(asyncssh.SSHClientSession[bytes]):
    """The target's side of one relayed channel: bytes go to the client's channel."""

    def __init__(self, client: _ClientChannel) -> None:
        self.client = client

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.client.from_upstream(data, datatype)

    def eof_received(self) -> bool:
        self.client.upstream_eof()
        return True

    def pause_writing(self) -> None:
        self.client.pause_reading()

    def resume_writing(self) -> None:
        self.client.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.upstream_closed()


class _Readable(Protocol):
    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class _ReadGate:
    """Whether one side of a relayed channel is read: not while the other side cannot take more
    (flow control: ``stop``/``go`` by reason) nor while the core's recorder catches up with what
    this side's traffic made it record (backpressure: :meth:`hold`). A paused asyncssh channel
    sends no window adjust, so the sender is slowed, not cut."""

    def __init__(self, *reasons: str) -> None:
        self.channel: _Readable | None = None
        self._reasons: set[str] = set(reasons)
        self._holds = 0
        self._paused = False

    def attach(self, channel: _Readable) -> None:
        """Gate this channel from now on (a new asyncssh channel reads)."""
        self.channel = channel
        self._paused = False
        self._apply()

    def stop(self, reason: str) -> None:
        self._reasons.add(reason)
        self._apply()

    def go(self, reason: str) -> None:
        self._reasons.discard(reason)
        self._apply()

    def hold(self, until: Awaitable[None]) -> None:
        """Read nothing more until ``until`` is done."""
        self._holds += 1
        self._apply()

        def release(_done: object) -> None:
            self._holds -= 1
            self._apply()

        asyncio.ensure_future(until).add_done_callback(release)

    def _apply(self) -> None:
        paused = bool(self._reasons or self._holds)
        if self.channel is None or paused == self._paused:
            return
        self._paused = paused
        if paused:
            self.channel.pause_reading()
        else:
            self.channel.resume_reading()


class _ClientChannel(asyncssh.SSHServerSession[bytes]):
    """One session channel of the client (shell, exec or sftp), relayed to one upstream."""

    def __init__(self, session: _Session) -> None:
        self.session = session
        self.number = session.channel_number()
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.upstream: asyncssh.SSHClientChannel[bytes] | None = None
        self.pty: tuple[str, tuple[int, int, int, int], Any] | None = None
        self.terminal: relay.TerminalRecording | None = None
        self.sftp: relay.SftpOperations | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._pending: list[tuple[bytes, asyncssh.DataType]] = []
        #: the client's channel is read once the upstream one is open
        self._client_reading = _ReadGate(_OPENING)
        self._upstream_reading = _ReadGate()
        self._client_eof = False
        self._done = False

    # -- client side ----------------------------------------------------------------------

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan
        self._client_reading.attach(chan)
        self.session.channels.add(self)

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any
    ) -> bool:
        self.pty = (term_type, term_size, term_modes)
        return True

    def shell_requested(self) -> bool:
        self._start(command=None, subsystem=None)
        return True

    def exec_requested(self, command: str) -> bool:
        self._start(command=command, subsystem=None)
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        if not relay.subsystem_allowed(subsystem):
            self.session.record(
                "subsystem_refused", {"channel": self.number, "subsystem": subsystem}
            )
            return False
        self._start(command=None, subsystem=subsystem)
        return True

    def _start(self, command: str | None, subsystem: str | None) -> None:
        assert self.chan is not None
        self.session.frontend.spawn(self._open_upstream(command, subsystem))

    async def _open_upstream(self, command: str | None, subsystem: str | None) -> None:
        session, chan = self.session, self.chan
        upstream = session.upstream
        assert chan is not None
        if upstream is None or session.cut_reason is not None:
            return
        env = relay.allowed_env(chan.get_environment())
        kwargs: dict[str, Any] = {"env": env, "encoding": None}
        if command is not None:
            kwargs["command"] = command
        if subsystem is not None:
            kwargs["subsystem"] = subsystem
        if self.pty is not None:
            term_type, term_size, term_modes = self.pty
            kwargs.update(term_type=term_type, term_size=term_size, term_modes=term_modes)
            self.terminal = relay.TerminalRecording(
                time.monotonic(), term_size[0], term_size[1], term_type
            )
            session.record(
                "asciicast_header",
                {"channel": self.number, **self.terminal.header(int(time.time()))},
            )
        if command is not None:
            recorded = session.record("exec", {"channel": self.number, "command": command})
        elif subsystem is not None:
            recorded = session.record("subsystem", {"channel": self.number, "subsystem": subsystem})
            self.sftp = relay.SftpOperations()
        else:
            recorded = session.record(
                "shell", {"channel": self.number, "pty": self.pty is not None}
            )
        if not recorded:
            return  # the session is being cut: nothing is started upstream
        try:
            channel, _ = await upstream.create_session(lambda: _UpstreamChannel(self), **kwargs)
        except (asyncssh.Error, OSError) as exc:
            log.warning(
                "ssh proxy: session %s: the target refused a channel (%s)",
                session.session_id,
                type(exc).__name__,
            )
            self._end_with_message("jitvault: the target refused to open this channel", 1)
            return
        if self._done:
            channel.close()
            return
        self.upstream = channel
        self._upstream_reading.attach(channel)
        for data, datatype in self._pending:
            channel.write(data, datatype)
        self._pending.clear()
        if self._client_eof:
            channel.write_eof()
        self._client_reading.go(_OPENING)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self.sftp is not None:
            ops = self.sftp.feed(data)
            for op in ops:
                if not self.session.record("sftp", {"channel": self.number, **op}):
                    return  # not recorded, not relayed
            if ops:
                self._slow_to_recorder(self._client_reading)
        if self.upstream is None:
            self._pending.append((data, datatype))
        else:
            self.upstream.write(data, datatype)

    def eof_received(self) -> bool:
        self._client_eof = True
        if self.upstream is not None:
            self.upstream.write_eof()
        return True  # keep our side open: the target still answers

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self.terminal is not None:
            self._record_terminal(self.terminal.resize(width, height, time.monotonic()))
        if self.upstream is not None:
            self.upstream.change_terminal_size(width, height, pixwidth, pixheight)

    def signal_received(self, signal: str) -> None:
        self.session.record("signal", {"channel": self.number, "signal": signal})
        if self.upstream is not None:
            self.upstream.send_signal(signal)

    def break_received(self, msec: int) -> bool:
        if self.upstream is not None:
            self.upstream.send_break(msec)
        return True

    def pause_writing(self) -> None:
        self._upstream_reading.stop(_PEER_FULL)

    def resume_writing(self) -> None:
        self._upstream_reading.go(_PEER_FULL)

    def connection_lost(self, exc: Exception | None) -> None:
        self._done = True
        self.flush_recording()
        self.session.channels.discard(self)
        if self.upstream is not None:
            self.upstream.close()

    # -- flow control from the upstream side ----------------------------------------------

    def pause_reading(self) -> None:
        self._client_reading.stop(_PEER_FULL)

    def resume_reading(self) -> None:
        self._client_reading.go(_PEER_FULL)

    # -- upstream side --------------------------------------------------------------------

    def from_upstream(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._done or self.chan is None or self.session.cut_reason is not None:
            return
        if self.terminal is not None:
            events = self.terminal.output(data, time.monotonic())
            if events:
                if not self._record_terminal(events):
                    return  # the recorder refused: the session is being cut, relay no more
                self._slow_to_recorder(self._upstream_reading)
            if self.terminal.pending_since is not None and self._flush_timer is None:
                self._flush_timer = asyncio.get_running_loop().call_later(
                    relay.BATCH_SECONDS, self._flush_due
                )
        self.chan.write(data, datatype)

    def upstream_eof(self) -> None:
        if not self._done and self.chan is not None and self.session.cut_reason is None:
            self.chan.write_eof()

    def upstream_closed(self) -> None:
        upstream = self.upstream
        if self._done or self.chan is None or upstream is None:
            return
        if self.session.cut_reason is not None:
            return
        self.flush_recording()
        status = upstream.get_exit_status()
        exit_signal = upstream.get_exit_signal()
        self.session.record(
            "exit",
            {
                "channel": self.number,
                "status": status,
                "signal": exit_signal[0] if exit_signal else None,
            },
        )
        if exit_signal is not None:
            self._done = True
            name, core, message, lang = exit_signal
            self.chan.exit_with_signal(name, core, message, lang)
        elif status is None or status < 0:  # no exit status: the target went away
            self._end_with_message("jitvault: the target closed the channel", _EXIT_CUT)
        else:
            self._done = True
            self.chan.exit(status)

    # -- recording and ends ---------------------------------------------------------------

    def _record_terminal(self, events: list[list[Any]]) -> bool:
        """Queue terminal events for recording; False if the core refused them (the session
        is then being cut)."""
        if not events:
            return True
        return self.session.record("asciicast", {"channel": self.number, "events": events})

    def _slow_to_recorder(self, side: _ReadGate) -> None:
        """After recording what ``side`` sent: if the recorder is behind, read no more from
        that side until it has caught up (a fast terminal or upload is slowed, not cut)."""
        backlog = self.session.ctx.recording_backlog()
        if backlog is not None:
            side.hold(backlog)

    def _flush_due(self) -> None:
        self._flush_timer = None
        if self.terminal is not None:
            self._record_terminal(self.terminal.flush())

    def flush_recording(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self.terminal is not None:
            self._record_terminal(self.terminal.flush(final=True))

    def cut(self, reason: str, hint: str | None = None) -> None:
        """The core cut the session: say why (and the hint) on stderr, close this channel."""
        told = f"jitvault: {reason}" + (f"\r\njitvault: {hint}" if hint else "")
        self._end_with_message(told, _EXIT_CUT)

    def _end_with_message(self, message: str, status: int) -> None:
        chan = self.chan
        self.flush_recording()
        self._done = True
        if self.upstream is not None:
            self.upstream.close()
        if chan is None:
            return
        with contextlib.suppress(Exception):
            chan.write_stderr(("\r\n" + message + "\r\n").encode())
            chan.exit(status)


__all__ = ["HOST_KEY_FILE", "LOGIN_TIMEOUT_SECONDS", "SshFrontend", "proxy_host_key"]

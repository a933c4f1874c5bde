"""One TCP connection of the proxy (client or upstream side) as an asyncio Protocol.

While logging in, a :class:`Wire` is read like a stream (``await wire.read()``); the relay then
takes it over with :meth:`Wire.relay_to`, and from there every chunk goes to the relay's
callback as it arrives, with no task, no queue and no copy in between. Flow control is the
transports' own: when a wire's outgoing buffer passes its high-water mark, the peer wire stops
reading (``pause_reading``) until the buffer drains below the low-water mark, so a slow reader
on one side holds back the fast writer on the other instead of filling the proxy's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, cast

#: a wire's outgoing buffer: the peer stops reading above HIGH, resumes below LOW
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
#: while logging in, reading pauses when this much waits unread
LOGIN_READ_LIMIT = 1 << 20


#: how long a closing connection waits for the peer to close too (see :meth:`Wire.close`)
LINGER_SECONDS = 1.0


def _drop(_data: bytes) -> None:
    """What a lingering close does with the peer's bytes."""


class Wire(asyncio.Protocol):
    """A connection's bytes: awaitable while logging in, pushed to a callback while relaying."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Wire | None = None
        self._buffer = bytearray()
        self._eof = False
        self._lost = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._paused = False
        #: how many holds (:meth:`hold_reading`) keep this wire from reading
        self._holds = 0
        self._on_data: Callable[[bytes], None] | None = None
        self._on_end: Callable[[str], None] | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        self._closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self._on_data is not None:
            self._on_data(data)
            return
        self._buffer += data
        if len(self._buffer) > LOGIN_READ_LIMIT and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wake()
        if self._on_end is not None:
            self._on_end("closed")
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = self._lost = True
        self._error = exc
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if self._on_end is not None:
            self._on_end("lost" if exc is not None else "closed")

    def pause_writing(self) -> None:
        self._paused = True
        if self.peer is not None:
            self.peer._stop_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self.peer is not None:
            self.peer._may_read()

    # -- reading pauses: flow control and holds ---------------------------------------------

    def _stop_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def _may_read(self) -> None:
        """Read again, unless a hold or the peer's full outgoing buffer still says no."""
        if self._holds or (self.peer is not None and self.peer._paused):
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def hold_reading(self, until: Awaitable[None]) -> None:
        """Read nothing more until ``until`` is done (on top of the flow control)."""
        self._holds += 1
        self._stop_reading()

        def release(_done: object) -> None:
            self._holds -= 1
            self._may_read()

        asyncio.ensure_future(until).add_done_callback(release)

    # -- the login phase: read like a stream ------------------------------------------------

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> bytes:
        """What arrived since the last read (waiting for something); b"" at the end."""
        while not self._buffer and not self._eof:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._error is not None and not self._buffer:
            raise ConnectionResetError("the connection was lost") from self._error
        data = bytes(self._buffer)
        self._buffer.clear()
        if self.transport is not None and not self._lost:
            self.transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the outgoing buffer is below its high-water mark."""
        if self._lost:
            raise ConnectionResetError("the connection was lost")
        while self._paused and not self._lost:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain

    async def send(self, data: bytes) -> None:
        self.write(data)
        await self.drain()

    async def start_tls(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None
    ) -> None:
        """Switch to TLS (nothing may be buffered unread: the caller's codec checks that)."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(
            self.transport,
            self,
            context,
            server_side=server_side,
            server_hostname=server_hostname,
        )
        if transport is None:
            raise ConnectionResetError("the connection closed during the TLS handshake")
        self.transport = transport
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)

    def extra_info(self, name: str) -> Any:
        return self.transport.get_extra_info(name) if self.transport is not None else None

    # -- the relay --------------------------------------------------------------------------

    def relay_to(
        self, peer: Wire, on_data: Callable[[bytes], None], on_end: Callable[[str], None]
    ) -> bytes:
        """From now on, chunks go to ``on_data`` and the end of the connection to ``on_end``;
        ``peer``'s reading pauses while this wire cannot keep up. Returns what was read and
        not consumed yet (for the relay to handle first)."""
        self.peer = peer
        self._on_data = on_data
        self._on_end = on_end
        left = bytes(self._buffer)
        self._buffer.clear()
        if self.transport is not None and not self._lost:
            self.transport.resume_reading()
        return left

    @property
    def detachable(self) -> bool:
        """Can :meth:`detach` hand this connection over now?"""
        transport = self.transport
        return not (
            transport is None
            or self.ended
            or transport.is_closing()
            or transport.get_extra_info("socket") is None
            or transport.get_write_buffer_size() != 0
        )

    @property
    def tls(self) -> ssl.SSLObject | None:
        """The connection's TLS object, where it speaks TLS."""
        return cast("ssl.SSLObject | None", self.extra_info("ssl_object"))

    def detach(self) -> tuple[int, bytes] | None:
        """Hand the connection over to native code: a duplicate of its socket (the transport is
        dropped, not shut down: the connection stays open through the duplicate) and what was
        read and not consumed yet (decrypted, on a TLS connection: its :attr:`tls` object's
        connection goes with the socket, and nothing here may use it again). None where it
        cannot be handed over: the end already reached, or bytes still waiting to be sent."""
        transport = self.transport
        if transport is None or not self.detachable:
            return None
        sock = transport.get_extra_info("socket")
        fd = os.dup(sock.fileno())
        left = bytes(self._buffer)
        self._buffer.clear()
        self._on_data, self._on_end = _drop, None
        self.peer = None
        transport.abort()
        return fd, left

    @property
    def ended(self) -> bool:
        return self._eof or self._lost

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def close(self, grace: float) -> None:
        """Close after what is buffered is sent; abort if that takes longer than ``grace``.

        A lingering close where it can (plain TCP, our side not closing yet): FIN after what is
        buffered, and what the peer still sends is dropped until it closes too (at most
        :data:`LINGER_SECONDS`). Closing with unread bytes from the peer would send it a reset,
        and a reset can make the peer lose our last (FATAL) message before it reads it.
        """
        transport = self.transport
        if transport is None:
            return
        if (
            not self._lost
            and self._closed is not None
            and not transport.is_closing()
            and transport.can_write_eof()
        ):
            self._on_data, self._on_end = _drop, None
            self._buffer.clear()
            with contextlib.suppress(Exception):
                transport.resume_reading()
                transport.write_eof()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._closed), min(grace, LINGER_SECONDS))
        with contextlib.suppress(Exception):
            transport.close()
        if self._closed is None or self._closed.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), grace)
        except TimeoutError:  # a peer that does not read (or a TLS close that hangs)
            transport.abort()


async def connect(host: str, port: int) -> Wire:
    """A Wire connected to ``host:port``."""
    loop = asyncio.get_running_loop()
    _, wire = await loop.create_connection(Wire, host, port)
    return wire


__all__ = ["LOGIN_READ_LIMIT", "WRITE_HIGH_WATER", "WRITE_LOW_WATER", "Wire", "connect"]

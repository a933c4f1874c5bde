"""Store lookups for clients that have proven nothing yet, a few at a time per source address.

A login looks its token (or offered SSH key) up in the store before the client has proven
anything, and so does a cancel request. Those lookups run in the proxy loop's shared thread
pool, where the session opens of clients that did prove their token run too. Without a bound, a
flood of logins with made-up tokens from one address, against a store that answers slowly,
would take every thread of that pool, and every other client's login would wait behind it.

:class:`PreAuthLimit` lets each source address have at most ``per_source`` such lookups in
flight; the rest of that source's attempts wait their turn (bounded by the front end's
handshake timeout), while other sources' lookups go ahead. A lookup whose client gave up
keeps its place until its thread has finished: the bound is on threads, not on clients.
Clients behind one NAT or load balancer share a source; ``server.proxy_preauth_per_source``
raises the bound for them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class _Source:
    slots: asyncio.Semaphore
    #: lookups of this source running or waiting (the entry goes when none is left)
    users: int = field(default=0)
    #: lookups of this source running
    running: int = field(default=0)


class Place:
    """A source's place for one lookup: given back when the ``async with`` ends, or, if
    :meth:`hold_until` was told of the lookup's future, when that future is done."""

    def __init__(self) -> None:
        self.held_by: asyncio.Future[Any] | None = None

    def hold_until(self, lookup: asyncio.Future[Any]) -> None:
        self.held_by = lookup


class PreAuthLimit:
    def __init__(self, per_source: int) -> None:
        self.per_source = per_source
        self._sources: dict[str, _Source] = {}

    def __len__(self) -> int:
        """Sources with lookups running or waiting (an idle source leaves nothing behind)."""
        return len(self._sources)

    def in_flight(self, source: str) -> int:
        """Lookups of ``source`` running now (waiting ones not counted)."""
        entry = self._sources.get(source)
        return 0 if entry is None else entry.running

    @contextlib.asynccontextmanager
    async def place(self, source: str | None) -> AsyncIterator[Place]:
        """Wait for a place of ``source`` (None: a client that proved its token; no bound).
        A caller that gives up while waiting takes no place and starts nothing."""
        if source is None:
            yield Place()
            return
        entry = self._sources.get(source)
        if entry is None:
            entry = self._sources[source] = _Source(asyncio.Semaphore(self.per_source))
        entry.users += 1
        try:
            await entry.slots.acquire()
        except BaseException:
            self._leave(source, entry)
            raise
        entry.running += 1
        place = Place()
        try:
            yield place
        finally:
            held_by = place.held_by
            if held_by is not None and not held_by.done():
                # its caller gave up (the client gone, the handshake timed out): the lookup
                # goes on in its thread, holding the place until then
                held_by.add_done_callback(lambda _: self._release(source, entry))
            else:
                self._release(source, entry)

    async def run(self, source: str, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in the shared pool once ``source`` has a free place."""
        async with self.place(source) as place:
            running = asyncio.ensure_future(asyncio.to_thread(fn, *args))
            place.hold_until(running)
            return await asyncio.shield(running)

    def _release(self, source: str, entry: _Source) -> None:
        entry.running -= 1
        entry.slots.release()
        self._leave(source, entry)

    def _leave(self, source: str, entry: _Source) -> None:
        entry.users -= 1
        if entry.users == 0 and self._sources.get(source) is entry:
            del self._sources[source]


__all__ = ["Place", "PreAuthLimit"]

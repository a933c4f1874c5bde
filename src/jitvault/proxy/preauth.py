"""Clients that have proven nothing yet: how many may be logging in, and their store lookups.

:class:`LoginPlaces` bounds the connections of a node that have not logged in yet, in all and
per source address (like sshd's MaxStartups and PerSourceMaxStartups, without the random early
drops): each one holds a socket, buffers and, for TLS, a handshake's work until it logs in or
its front end's login timeout ends it. A connection over a bound is refused at once, before
anything is read from it.

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
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

#: at most one warning about refused connections per this many seconds (a flood logs a count)
REFUSAL_LOG_SECONDS = 10.0


class _LoginPlace:
    """A connection's place among those logging in; :meth:`release` gives it back (once)."""

    __slots__ = ("_places", "_source")

    def __init__(self, places: LoginPlaces, source: str) -> None:
        self._places: LoginPlaces | None = places
        self._source = source

    def release(self) -> None:
        places, self._places = self._places, None
        if places is not None:
            places._release(self._source)


class LoginPlaces:
    """The connections of a node that have not logged in yet: at most ``most`` in all and
    ``per_source`` from one address (``server.proxy_max_startups`` and
    ``server.proxy_max_startups_per_source``). Clients behind one NAT or load balancer share an
    address."""

    def __init__(
        self, most: int, per_source: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.most = most
        self.per_source = per_source
        self._clock = clock
        self._by_source: dict[str, int] = {}
        self._taken = 0
        #: connections refused since the node started
        self.refused = 0
        self._unlogged = 0
        self._logged_at: float | None = None

    def __len__(self) -> int:
        """Connections logging in now."""
        return self._taken

    def from_source(self, source: str) -> int:
        return self._by_source.get(source, 0)

    def admit(self, source: str) -> _LoginPlace | None:
        """A place for a new connection from ``source``; None when a bound is reached."""
        held = self._by_source.get(source, 0)
        if self._taken >= self.most:
            self._refused(
                f"all {self.most} places of the node are taken (server.proxy_max_startups)"
            )
            return None
        if held >= self.per_source:
            self._refused(
                f"all {self.per_source} places of {source} are taken"
                " (server.proxy_max_startups_per_source)"
            )
            return None
        self._by_source[source] = held + 1
        self._taken += 1
        return _LoginPlace(self, source)

    def _release(self, source: str) -> None:
        self._taken -= 1
        held = self._by_source[source] - 1
        if held:
            self._by_source[source] = held
        else:
            del self._by_source[source]

    def _refused(self, why: str) -> None:
        self.refused += 1
        self._unlogged += 1
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < REFUSAL_LOG_SECONDS:
            return
        log.warning(
            "proxy: %d new connection(s) refused since the last such warning: %s; raise the"
            " bound if these are your clients",
            self._unlogged,
            why,
        )
        self._unlogged = 0
        self._logged_at = now


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


__all__ = ["LoginPlaces", "Place", "PreAuthLimit"]

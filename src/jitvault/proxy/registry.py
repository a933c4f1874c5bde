"""The registry of live proxy sessions on this node, and the watcher that cuts them.

A session is cut when its grant's time is up (checked here, without a database round trip) or
when its row was ended elsewhere: by a revoke, by the sweeper, by the removal of the SSH key it
logged in with, on any node (checked every ``interval`` seconds, in a thread of the watcher's
own: work the clients cause in the loop's shared executor cannot delay it). Both happen within
2 seconds.

The watcher is also this node's heartbeat: every quarter of ``server.session_lost_seconds`` it
tells the store that the sessions here are still held, so that the sessions of a node that
crashed are ended by the others (:func:`~jitvault.services.sessions.end_lost_sessions`). A node
stopping cleanly cuts its own (:meth:`SessionRegistry.cut_all`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime

from jitvault.domain import RequestState
from jitvault.osthread import named_thread_pool
from jitvault.plugin_api import Cut, SessionHandle
from jitvault.services import Node, grants, sessions
from jitvault.services.ssh_keys import KEY_REMOVED_REASON

log = logging.getLogger(__name__)

EXPIRED = "access grant expired"
#: how many of the latest ends the registry remembers the grants of (see an_end_recorded)
_RECENT_ENDS = 10_000


class SessionRegistry:
    def __init__(self, node: Node, interval: float = 0.5) -> None:
        self.node = node
        self.interval = interval
        self.heartbeat_interval = node.settings.server.session_lost_seconds / 4
        self._live: dict[int, tuple[SessionHandle, datetime]] = {}
        #: sessions registered whose end is not recorded yet (cut or not), to their grants
        self._held: dict[int, int] = {}
        #: logins waiting for a session's end to be recorded (see :meth:`an_end_recorded`)
        self._end_waiters: list[asyncio.Future[None]] = []
        #: how many sessions' ends this registry has seen recorded, and for each grant (the
        #: latest _RECENT_ENDS of them) that count when its last end was recorded
        self.ends_recorded = 0
        self._last_end_of: dict[int, int] = {}
        #: the cuts this registry made of sessions whose ends are not recorded yet
        self._cuts: dict[int, Cut] = {}
        #: the cut of every session here once the node stops (:meth:`cut_all`)
        self._stopping: Cut | None = None
        #: cuts of sessions registered while the node stops (a reference keeps each alive)
        self._late_cuts: set[asyncio.Future[None]] = set()
        self._drained: asyncio.Event | None = None
        self._thread = named_thread_pool("watcher", max_workers=1)

    def close(self) -> None:
        """Let the watcher's thread go (the node stops)."""
        self._thread.shutdown(wait=False)

    def add(self, handle: SessionHandle, expires_at: datetime, grant_id: int) -> None:
        self._live[handle.session_id] = (handle, expires_at)
        self._held[handle.session_id] = grant_id
        if self._stopping is not None:  # a login that finished after the cut of the rest
            cutting = asyncio.ensure_future(self._cut(handle.session_id, self._stopping))
            self._late_cuts.add(cutting)
            cutting.add_done_callback(self._late_cuts.discard)

    def remove(self, session_id: int) -> None:
        """The session is ending: nothing is left to cut."""
        self._live.pop(session_id, None)

    def ended(self, session_id: int) -> None:
        """The session's end is recorded (or could not be): the node no longer holds it."""
        self._live.pop(session_id, None)
        grant_id = self._held.pop(session_id, None)
        self._cuts.pop(session_id, None)
        self.ends_recorded += 1
        if grant_id is not None:
            self._last_end_of[grant_id] = self.ends_recorded
            if len(self._last_end_of) > 2 * _RECENT_ENDS:  # logins look back a moment only
                oldest = self.ends_recorded - _RECENT_ENDS
                self._last_end_of = {g: n for g, n in self._last_end_of.items() if n > oldest}
        waiters, self._end_waiters = self._end_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        if not self._held and self._drained is not None:
            self._drained.set()

    async def an_end_recorded(self, grant_id: int, since: int) -> bool:
        """True at once if an end of one of this grant's sessions was recorded since
        :attr:`ends_recorded` was ``since``; else wait until the end of one of its sessions
        held here is recorded; False at once if none is held here (the caller bounds the wait).

        A client that closes a connection and opens another at once (a pool, a GUI) would
        otherwise meet the grant's ``max_connections`` before the proxy, which learns of the
        close after the client, has recorded the end."""
        if self._last_end_of.get(grant_id, since) > since:
            return True
        mine = {sid for sid, grant in self._held.items() if grant == grant_id}
        if not mine:
            return False
        while mine <= self._held.keys():
            waiter = asyncio.get_running_loop().create_future()
            self._end_waiters.append(waiter)
            await waiter
        return True

    def __len__(self) -> int:
        return len(self._live)

    async def sweep_once(self, now: Callable[[], datetime] | None = None) -> int:
        """Cut what is due; returns how many sessions were cut."""
        at = (now or self.node.clock)()
        due: dict[int, Cut] = {
            sid: Cut(EXPIRED) for sid, (_, expires) in self._live.items() if expires <= at
        }
        rest = [sid for sid in self._live if sid not in due]
        if rest:
            ended = await asyncio.get_running_loop().run_in_executor(
                self._thread, sessions.ended_among, self.node, rest
            )
            due.update({sid: Cut(_reason(why)) for sid, why in ended.items()})
        for sid, cut in due.items():
            await self._cut(sid, cut)
        return len(due)

    async def cut(self, session_ids: set[int], cut: Cut) -> None:
        """Cut these sessions (those that live on this node), telling their clients why."""
        for sid in sorted(session_ids):
            await self._cut(sid, cut)

    def grant_lives(self, session_id: int) -> bool:
        """Whether this registry cut the session with a cut its grant outlives: its end then
        does not end an ``--end-on-disconnect`` grant (its user did not disconnect)."""
        cut = self._cuts.get(session_id)
        return cut is not None and cut.grant_lives

    @property
    def held(self) -> int:
        """Sessions registered here whose end has not been recorded yet."""
        return len(self._held)

    async def cut_all(self, cut: Cut) -> None:
        """The node stops: cut every session here, and every one registered from now on,
        telling each client why; returns once their ends are recorded (the caller bounds the
        wait: those left are ended as lost later, by any node)."""
        self._stopping = cut
        self._drained = asyncio.Event()
        await self.cut(set(self._live), cut)
        if self._held:
            await self._drained.wait()

    async def _cut(self, session_id: int, cut: Cut) -> None:
        entry = self._live.pop(session_id, None)
        if entry is None:
            return
        self._cuts[session_id] = cut
        try:
            await entry[0].close(cut)
        except Exception:  # one session's trouble must not stop the cutting of others
            log.exception("cutting session %s failed", session_id)

    async def heartbeat(self) -> None:
        """Tell the store that the sessions here are still held."""
        await asyncio.get_running_loop().run_in_executor(
            self._thread, sessions.heartbeat, self.node, sorted(self._held)
        )

    async def watch(self) -> None:
        beat_due = 0.0
        while True:
            try:
                await self.sweep_once()
            except Exception:
                log.exception("session watcher pass failed")
            if time.monotonic() >= beat_due:
                try:
                    await self.heartbeat()
                    beat_due = time.monotonic() + self.heartbeat_interval
                except Exception as exc:  # retried at the next pass
                    log.warning("session heartbeat failed (%s)", type(exc).__name__)
            await asyncio.sleep(self.interval)


def _reason(end_reason: str) -> str:
    """What the client of a session ended elsewhere is told, from the session's end reason."""
    if end_reason == KEY_REMOVED_REASON:
        return "the SSH key of this session was removed"
    grant_end = grants.grant_end_of(end_reason)
    if grant_end is RequestState.REVOKED:
        return "access grant revoked"
    if grant_end is not None:  # its time was up, or its last session closed
        return EXPIRED
    return "session ended"


__all__ = ["EXPIRED", "SessionRegistry"]

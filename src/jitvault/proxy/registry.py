"""The registry of live proxy sessions on this node, and the watcher that cuts them.

A session is cut when its grant's time is up (checked here, without a database round trip) or
when its row was ended elsewhere: by a revoke, by the sweeper, by the removal of the SSH key it
logged in with, on any node (checked every ``interval`` seconds). Both happen within 2 seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from jitvault.plugin_api import SessionHandle
from jitvault.services import Node, sessions
from jitvault.services.ssh_keys import KEY_REMOVED_REASON

log = logging.getLogger(__name__)

EXPIRED = "access grant expired"


class SessionRegistry:
    def __init__(self, node: Node, interval: float = 0.5) -> None:
        self.node = node
        self.interval = interval
        self._live: dict[int, tuple[SessionHandle, datetime]] = {}

    def add(self, handle: SessionHandle, expires_at: datetime) -> None:
        self._live[handle.session_id] = (handle, expires_at)

    def remove(self, session_id: int) -> None:
        self._live.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._live)

    async def sweep_once(self, now: Callable[[], datetime] | None = None) -> int:
        """Cut what is due; returns how many sessions were cut."""
        at = (now or self.node.clock)()
        due: dict[int, str] = {
            sid: EXPIRED for sid, (_, expires) in self._live.items() if expires <= at
        }
        rest = [sid for sid in self._live if sid not in due]
        if rest:
            ended = await asyncio.to_thread(sessions.ended_among, self.node, rest)
            due.update({sid: _reason(why) for sid, why in ended.items()})
        for sid, why in due.items():
            await self._cut(sid, why)
        return len(due)

    async def cut(self, session_ids: set[int], reason: str) -> None:
        """Cut these sessions (those that live on this node), telling their clients why."""
        for sid in sorted(session_ids):
            await self._cut(sid, reason)

    async def _cut(self, session_id: int, reason: str) -> None:
        entry = self._live.pop(session_id, None)
        if entry is None:
            return
        try:
            await entry[0].close(reason)
        except Exception:  # one session's trouble must not stop the cutting of others
            log.exception("cutting session %s failed", session_id)

    async def watch(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception:
                log.exception("session watcher pass failed")
            await asyncio.sleep(self.interval)


def _reason(end_reason: str) -> str:
    if end_reason == KEY_REMOVED_REASON:
        return "the SSH key of this session was removed"
    if "revoked" in end_reason:
        return "access grant revoked"
    if "ended" in end_reason or "expired" in end_reason:
        return EXPIRED
    return "session ended"


__all__ = ["EXPIRED", "SessionRegistry"]

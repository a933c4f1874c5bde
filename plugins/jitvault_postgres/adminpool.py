"""A small pool of idle administrator connections, per target, for the lifecycle operations.

Issuing and dropping an ephemeral role used to open a new connection (TCP, SCRAM, backend
start) for every call: most of what the call cost. The pool keeps a few idle connections:

* keyed by the target's name, address, database, sslmode, admin user and a fingerprint of the
  admin secret (an HMAC under a key drawn when the process starts, so no hash of the secret is
  comparable outside it): a rotated admin password never gets a connection made with the old
  one, and taking a connection under a new fingerprint closes the target's idle ones made with
  any other;
* a connection goes back only when the operation succeeded and it is idle outside any
  transaction; any error closes it; no statement is sent to check it (a dead one shows at its
  first statement, and the operation is then run again once on new connections);
* at most ``per_key`` idle connections per key and ``max_idle`` in all; an idle connection
  older than ``idle_seconds`` is closed the next time the pool is used.

Thread-safe: the core runs each plugin call in an event loop of its own (``asyncio.run``, from
the API's and the worker's threads), so a connection is used by one loop at a time and never
shared while checked out. Only psycopg's per-call waiting touches the running loop.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import pq

if TYPE_CHECKING:
    from jitvault_postgres.lifecycle import Endpoint

Conn = psycopg.AsyncConnection[Any]


class AdminPool:
    def __init__(self, *, per_key: int = 4, max_idle: int = 32, idle_seconds: float = 30.0):
        self.per_key = per_key
        self.max_idle = max_idle
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: dict[Hashable, list[tuple[Conn, float]]] = {}
        self._fingerprint_key = secrets.token_bytes(32)

    def key(self, ep: Endpoint) -> Hashable:
        secret = ep.admin_secret.reveal().encode() if ep.admin_secret is not None else b""
        fingerprint = hmac.new(self._fingerprint_key, secret, hashlib.sha256).digest()
        return (ep.target_name, ep.host, ep.port, ep.dbname, ep.sslmode, ep.admin_user, fingerprint)

    def take(self, key: Hashable, target_name: str) -> tuple[Conn | None, list[Conn]]:
        """An idle connection for ``key`` (None if none), and the connections to close now:
        the expired ones, and the target's made under other credentials."""
        now = time.monotonic()
        stale: list[Conn] = []
        found: Conn | None = None
        with self._lock:
            for k in list(self._idle):
                idle = self._idle[k]
                other = k != key and isinstance(k, tuple) and k[0] == target_name
                keep = []
                for conn, at in idle:
                    if other or now - at >= self.idle_seconds:
                        stale.append(conn)
                    else:
                        keep.append((conn, at))
                if keep:
                    self._idle[k] = keep
                else:
                    del self._idle[k]
            idle = self._idle.get(key, [])
            while idle and found is None:
                conn, _ = idle.pop()
                if usable(conn):
                    found = conn
                else:
                    stale.append(conn)
            if not idle:
                self._idle.pop(key, None)
        return found, stale

    def give(self, key: Hashable, conn: Conn) -> Conn | None:
        """Keep ``conn`` for the next call; returns it back if it is not kept (to be closed)."""
        if not usable(conn):
            return conn
        with self._lock:
            total = sum(len(v) for v in self._idle.values())
            idle = self._idle.setdefault(key, [])
            if len(idle) >= self.per_key or total >= self.max_idle:
                return conn
            idle.append((conn, time.monotonic()))
        return None

    def close_all(self) -> None:
        """Close every idle connection now, without an event loop (at exit)."""
        with self._lock:
            conns = [c for idle in self._idle.values() for c, _ in idle]
            self._idle.clear()
        for conn in conns:
            conn.pgconn.finish()  # what AsyncConnection.close does, minus the awaiting


def new_pool() -> AdminPool:
    """The process's pool, its idle connections closed when the process exits."""
    pool = AdminPool()
    atexit.register(pool.close_all)
    return pool


def usable(conn: Conn) -> bool:
    """Open, not broken, and idle outside any transaction (nothing to reset)."""
    return (
        not conn.closed
        and not conn.broken
        and conn.pgconn.status == pq.ConnStatus.OK
        and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
    )


__all__ = ["AdminPool", "new_pool", "usable"]

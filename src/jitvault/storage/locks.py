"""Locks that die with their process.

A rotation holds its account's lock while it talks to the target. On PostgreSQL it is a
session advisory lock on a connection of its own: if the process is killed, the connection
closes and the lock is gone, so another node (or the restarted one) can reconcile at once. The
embedded SQLite default runs one node, so a lock in this process is enough.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

from jitvault.storage.db import Database

_LOCAL: dict[tuple[str, int], threading.Lock] = {}
_LOCAL_GUARD = threading.Lock()

# advisory lock keys are (class id, object id) pairs; class ids are "jv" + a number per kind
ACCOUNT_LOCK_CLASS = 0x6A7601
LOCK_CLASSES = {"account": ACCOUNT_LOCK_CLASS, "grant": 0x6A7602}


@contextmanager
def try_lock(db: Database, kind: str, object_id: int) -> Iterator[bool]:
    """Yield True while holding the lock, or False at once if someone else holds it."""
    lock_class = LOCK_CLASSES[kind]
    if db.is_postgres:
        with db.engine.connect() as conn:
            got = bool(
                conn.execute(
                    text("SELECT pg_try_advisory_lock(:c, :o)"),
                    {"c": lock_class, "o": object_id},
                ).scalar_one()
            )
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    conn.execute(
                        text("SELECT pg_advisory_unlock(:c, :o)"),
                        {"c": lock_class, "o": object_id},
                    )
                    conn.commit()
        return
    with _LOCAL_GUARD:
        lock = _LOCAL.setdefault((kind, object_id), threading.Lock())
    got = lock.acquire(blocking=False)
    try:
        yield got
    finally:
        if got:
            lock.release()


__all__ = ["try_lock"]

"""Users' registered SSH public keys: the rows the SSH proxy's key login checks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select
from sqlalchemy.exc import IntegrityError

from jitvault.domain import UserSshKey
from jitvault.errors import Conflict
from jitvault.storage import tables as t
from jitvault.storage.repositories import aware

_K = t.user_ssh_keys


def _query() -> Any:
    return select(_K, t.users.c.name.label("user_name"), t.users.c.disabled).join(
        t.users, t.users.c.id == _K.c.user_id
    )


def _key(row: Row[Any]) -> UserSshKey:
    return UserSshKey(
        id=row.id,
        user=row.user_name,
        algorithm=row.algorithm,
        fingerprint=row.fingerprint,
        public_key=row.public_key,
        comment=row.comment,
        created_at=aware(row.created_at),
    )


def key_add(
    conn: Connection,
    user_id: int,
    algorithm: str,
    fingerprint: str,
    public_key: str,
    comment: str,
    at: datetime,
) -> UserSshKey:
    """Register a key; Conflict if its fingerprint is registered already (to anyone)."""
    taken = Conflict(
        "this SSH key is registered already",
        hint="one key belongs to one person: see 'jitvault user key list'",
    )
    if conn.execute(select(_K.c.id).where(_K.c.fingerprint == fingerprint)).first() is not None:
        raise taken
    try:
        conn.execute(
            insert(_K).values(
                user_id=user_id,
                algorithm=algorithm,
                fingerprint=fingerprint,
                public_key=public_key,
                comment=comment,
                created_at=at,
            )
        )
    except IntegrityError:  # the same key, registered by a concurrent call
        raise taken from None
    found = conn.execute(_query().where(_K.c.fingerprint == fingerprint)).first()
    assert found is not None
    return _key(found)


def keys_of(conn: Connection, user_id: int) -> list[UserSshKey]:
    rows = conn.execute(_query().where(_K.c.user_id == user_id).order_by(_K.c.id))
    return [_key(r) for r in rows]


def key_find(conn: Connection, fingerprint: str, lock: bool = False) -> Row[Any] | None:
    """The key's row with its owner's ``user_name`` and ``disabled``, or None. ``lock`` holds
    a share lock on the key's row until the transaction ends (PostgreSQL; SQLite serializes
    writers anyway), so that a removal of the key waits for it."""
    q = _query().where(_K.c.fingerprint == fingerprint)
    if lock:
        q = q.with_for_update(read=True, of=_K)
    return conn.execute(q).first()


def key_remove(conn: Connection, key_id: int) -> None:
    conn.execute(delete(_K).where(_K.c.id == key_id))


__all__ = ["key_add", "key_find", "key_remove", "keys_of"]

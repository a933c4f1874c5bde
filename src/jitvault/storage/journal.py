"""The rotation journal's rows, and the account columns a rotation changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select, update

from jitvault.crypto import Keyring
from jitvault.domain import AccountStatus, Sensitive
from jitvault.storage import sealed
from jitvault.storage import tables as t
from jitvault.storage.repositories import now


@dataclass(frozen=True)
class JournalEntry:
    id: int
    account_id: int
    state: str
    rejections: int
    reason: str


def _entry(row: Row[Any]) -> JournalEntry:
    return JournalEntry(row.id, row.account_id, row.state, row.rejections, row.reason)


def entry_for(conn: Connection, account_id: int) -> JournalEntry | None:
    row = conn.execute(
        select(t.rotation_journal).where(t.rotation_journal.c.account_id == account_id)
    ).first()
    return None if row is None else _entry(row)


def open_entries(conn: Connection) -> list[JournalEntry]:
    rows = conn.execute(select(t.rotation_journal).order_by(t.rotation_journal.c.id))
    return [_entry(r) for r in rows]


def create(
    conn: Connection, keyring: Keyring, account_id: int, secret: Sensitive[bytes], reason: str
) -> JournalEntry:
    ts = now()
    result = conn.execute(
        insert(t.rotation_journal).values(
            account_id=account_id,
            state="journaled",
            rejections=0,
            reason=reason,
            created_at=ts,
            updated_at=ts,
        )
    )
    pk = result.inserted_primary_key
    assert pk is not None
    sealed.seal_column(conn, keyring, t.JOURNAL_SECRET, int(pk[0]), secret)
    entry = entry_for(conn, account_id)
    assert entry is not None
    return entry


def pending_secret(conn: Connection, keyring: Keyring, entry: JournalEntry) -> Sensitive[bytes]:
    value = sealed.open_column(conn, keyring, t.JOURNAL_SECRET, entry.id)
    assert value is not None
    return value


def replace_pending(
    conn: Connection, keyring: Keyring, entry: JournalEntry, secret: Sensitive[bytes]
) -> None:
    """A fresh pending secret (after repeated rejections of the old one)."""
    sealed.seal_column(conn, keyring, t.JOURNAL_SECRET, entry.id, secret)
    conn.execute(
        update(t.rotation_journal)
        .where(t.rotation_journal.c.id == entry.id)
        .values(state="journaled", rejections=0, updated_at=now())
    )


def set_state(conn: Connection, entry_id: int, state: str, rejections: int | None = None) -> None:
    values: dict[str, object] = {"state": state, "updated_at": now()}
    if rejections is not None:
        values["rejections"] = rejections
    conn.execute(
        update(t.rotation_journal).where(t.rotation_journal.c.id == entry_id).values(**values)
    )


def remove(conn: Connection, account_id: int) -> None:
    conn.execute(delete(t.rotation_journal).where(t.rotation_journal.c.account_id == account_id))


def account_secrets(
    conn: Connection, keyring: Keyring, account_id: int
) -> tuple[Sensitive[bytes] | None, Sensitive[bytes] | None]:
    """``(current, previous)`` vaulted secrets of an account."""
    return (
        sealed.open_column(conn, keyring, t.ACCOUNT_SECRET, account_id),
        sealed.open_column(conn, keyring, t.ACCOUNT_PREVIOUS_SECRET, account_id),
    )


def commit_secret(
    conn: Connection, keyring: Keyring, account_id: int, new: Sensitive[bytes]
) -> None:
    """current becomes previous, ``new`` becomes current, the journal entry goes."""
    current, _ = account_secrets(conn, keyring, account_id)
    if current is not None and current != new:
        sealed.seal_column(conn, keyring, t.ACCOUNT_PREVIOUS_SECRET, account_id, current)
    sealed.seal_column(conn, keyring, t.ACCOUNT_SECRET, account_id, new)
    conn.execute(
        update(t.accounts)
        .where(t.accounts.c.id == account_id)
        .values(secret_updated_at=now(), status=AccountStatus.OK.value)
    )
    remove(conn, account_id)


def set_status(conn: Connection, account_id: int, status: AccountStatus) -> None:
    conn.execute(
        update(t.accounts).where(t.accounts.c.id == account_id).values(status=status.value)
    )


__all__ = [
    "JournalEntry",
    "account_secrets",
    "commit_secret",
    "create",
    "entry_for",
    "open_entries",
    "pending_secret",
    "remove",
    "replace_pending",
    "set_state",
    "set_status",
]

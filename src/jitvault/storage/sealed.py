"""Reading and writing encrypted columns, and moving them to a new key term.

Every write of an envelope takes a shared lock on the keyring row of the term it seals under, and
the retirement of a term takes an exclusive lock on the same row and recounts its users. So a
writer that raced a key rotation either lands before the recount (and the term is not retired)
or sees the term retired and fails cleanly; no value is ever left under destroyed key material.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Select, func, select, update

from jitvault.crypto import PURPOSE_DATA, CipherContext, Keyring
from jitvault.domain import Sensitive
from jitvault.errors import CryptoError, NotFound
from jitvault.storage import tables as t
from jitvault.storage.tables import ENCRYPTED_COLUMNS, EncryptedColumn


class StaleKeyring(CryptoError):
    """The database has a newer active key term than this node's keyring: reload and retry."""


#: every seal takes it (hot path: see jitvault.storage)
_ACTIVE_TERM = (
    select(t.keyring.c.term)
    .where(t.keyring.c.purpose == PURPOSE_DATA, t.keyring.c.state == "active")
    .with_for_update(read=True)
)


def _lock_active_term(conn: Connection, keyring: Keyring) -> int:
    row = conn.execute(_ACTIVE_TERM).first()
    if row is None:
        raise CryptoError("no active data key in the keyring", hint="run 'jitvault init'")
    term = int(row.term)
    if term != keyring.active_term:
        raise StaleKeyring(f"key term {term} is active in the database but not in memory")
    return term


def context_for(col: EncryptedColumn, row_id: int) -> CipherContext:
    return CipherContext(col.table.name, row_id, col.column)


def seal_column(
    conn: Connection, keyring: Keyring, col: EncryptedColumn, row_id: int, value: Sensitive[bytes]
) -> None:
    """Encrypt ``value`` under the active term, bound to this row and column, and store it."""
    term = _lock_active_term(conn, keyring)
    envelope = keyring.encrypt(value, context_for(col, row_id))
    table = col.table
    result = conn.execute(
        update(table)
        .where(table.c[col.id_column] == row_id)
        .values({col.column: envelope, col.term_column: term})
    )
    if result.rowcount != 1:
        raise NotFound(f"{table.name} row {row_id} does not exist")


def seal_new(
    conn: Connection,
    keyring: Keyring,
    col: EncryptedColumn,
    values: list[tuple[int, Sensitive[bytes]]],
) -> tuple[int, list[str]]:
    """Envelopes for rows about to be inserted with these ids: the term (locked shared, as
    :func:`seal_column` does) and each value sealed under it, bound to its row and column."""
    term = _lock_active_term(conn, keyring)
    sealed_under, envelopes = keyring.encrypt_many(
        [(context_for(col, row_id), value) for row_id, value in values]
    )
    if sealed_under != term:  # a term was added to the keyring since the lock
        raise StaleKeyring(f"key term {sealed_under} is active in memory but not in the database")
    return term, envelopes


def open_column(
    conn: Connection, keyring: Keyring, col: EncryptedColumn, row_id: int
) -> Sensitive[bytes] | None:
    """Decrypt the value stored in this row and column, or None if it holds none."""
    table = col.table
    envelope = conn.execute(
        select(table.c[col.column]).where(table.c[col.id_column] == row_id)
    ).scalar_one_or_none()
    if envelope is None:
        return None
    return keyring.decrypt(envelope, context_for(col, row_id))


def count_below(conn: Connection, term: int) -> int:
    """How many stored values are sealed under a term older than ``term``."""
    total = 0
    for col in ENCRYPTED_COLUMNS:
        tc = col.table.c[col.term_column]
        total += conn.execute(
            select(func.count()).select_from(col.table).where(tc.is_not(None), tc < term)
        ).scalar_one()
    return total


def count_under(conn: Connection, term: int) -> int:
    total = 0
    for col in ENCRYPTED_COLUMNS:
        tc = col.table.c[col.term_column]
        total += conn.execute(
            select(func.count()).select_from(col.table).where(tc == term)
        ).scalar_one()
    return total


def older_values(col: EncryptedColumn, term: int, limit: int) -> Select[tuple[Any, Any]]:
    """Up to ``limit`` (id, envelope) of ``col`` sealed under a term older than ``term``.

    Ordered by term, then id: the order of the term column's index, so that the database
    reads only the rows it returns. (Ordered by id alone, SQLite walks the whole table in id
    order to fill the LIMIT, and the worker asks this every pass: with a million recorded
    statements, that is a full scan a second, under the write lock.)"""
    table = col.table
    idc, tc = table.c[col.id_column], table.c[col.term_column]
    return (
        select(idc, table.c[col.column])
        .where(tc.is_not(None), tc < term)
        .order_by(tc, idc)
        .limit(limit)
    )


def reencrypt_batch(conn: Connection, keyring: Keyring, batch: int = 200) -> int:
    """Move up to ``batch`` values sealed under older terms to the active term.

    Each value is decrypted and re-sealed in the caller's transaction, so a crash leaves every
    row either wholly old or wholly new. Returns how many values moved (0 when done).
    """
    term = _lock_active_term(conn, keyring)
    moved = 0
    for col in ENCRYPTED_COLUMNS:
        table = col.table
        idc = table.c[col.id_column]
        for row_id, envelope in conn.execute(older_values(col, term, batch - moved)).all():
            ctx = context_for(col, row_id)
            plain = keyring.decrypt(envelope, ctx)
            conn.execute(
                update(table)
                .where(idc == row_id)
                .values({col.column: keyring.encrypt(plain, ctx), col.term_column: term})
            )
            moved += 1
        if moved >= batch:
            break
    return moved


def retire_terms(conn: Connection, active_term: int) -> list[int]:
    """Destroy the key material of every older term that no stored value uses any more."""
    retired: list[int] = []
    old = conn.execute(
        select(t.keyring.c.term)
        .where(
            t.keyring.c.purpose == PURPOSE_DATA,
            t.keyring.c.term < active_term,
            t.keyring.c.state != "retired",
        )
        .with_for_update()
    ).all()
    for (term,) in old:
        if count_under(conn, term):
            continue
        conn.execute(
            update(t.keyring)
            .where(t.keyring.c.purpose == PURPOSE_DATA, t.keyring.c.term == term)
            .values(state="retired", wrapped=None, retired_at=datetime.now(UTC))
        )
        retired.append(int(term))
    return retired


__all__ = [
    "StaleKeyring",
    "context_for",
    "count_below",
    "count_under",
    "older_values",
    "open_column",
    "reencrypt_batch",
    "retire_terms",
    "seal_column",
]

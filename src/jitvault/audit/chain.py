"""The hash-chained, fail-closed audit log.

Each row carries ``mac = HMAC(k, canonical(row) || prev_mac)`` with ``k`` derived from the
keyring. The newest ``(seq, mac)`` is also kept in ``audit_head`` with its own MAC, so removing
rows from the end is detected as well as editing, deleting or reordering rows in the middle.

:func:`emit` writes in the caller's transaction: if it fails, the action it records fails too and
nothing of it is kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from jitvault.audit.events import AuditEvent
from jitvault.crypto import Keyring, chain_mac
from jitvault.domain import Sensitive
from jitvault.errors import AuditUnavailable, CryptoError
from jitvault.storage import tables as t

GENESIS = "0" * 64
HEAD_ID = 1


def _canonical(
    seq: int,
    ts: str,
    actor: str,
    action: str,
    subject: str,
    outcome: str,
    source: str,
    details: str,
    prev_mac: str,
) -> bytes:
    return json.dumps(
        [seq, ts, actor, action, subject, outcome, source, details, prev_mac],
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


#: the statements every event runs (hot path: see jitvault.storage)
_HEAD = (
    select(t.audit_head.c.seq, t.audit_head.c.mac)
    .where(t.audit_head.c.id == HEAD_ID)
    .with_for_update()
)
_APPEND = insert(t.audit_events)
_ADVANCE = update(t.audit_head).where(t.audit_head.c.id == HEAD_ID)


def _head_mac(key: Sensitive[bytes], seq: int, mac: str) -> str:
    return chain_mac(key, f"head|{seq}|{mac}".encode())


def init_chain(conn: Connection, keyring: Keyring) -> None:
    """Create the genesis head (seq 0). Called once at initialization."""
    key = keyring.audit_key()
    conn.execute(
        insert(t.audit_head).values(
            id=HEAD_ID, seq=0, mac=GENESIS, head_mac=_head_mac(key, 0, GENESIS)
        )
    )


def emit(conn: Connection, keyring: Keyring, event: AuditEvent) -> int:
    """Append ``event`` to the chain in the caller's transaction; return its sequence number.

    Raises :class:`AuditUnavailable` if it cannot be written: the caller's transaction must then
    roll back, so the action it records does not happen.
    """
    try:
        key = keyring.audit_key()
        head = conn.execute(_HEAD).first()
        if head is None:
            raise AuditUnavailable("the audit chain has no head", hint="run 'jitvault init'")
        seq = int(head.seq) + 1
        ts = datetime.now(UTC).isoformat(timespec="microseconds")
        details = json.dumps(event.details, sort_keys=True, separators=(",", ":"))
        fields = (
            seq,
            ts,
            event.actor,
            event.action.value,
            event.subject,
            event.outcome.value,
            event.source,
            details,
            head.mac,
        )
        mac = chain_mac(key, _canonical(*fields))
        conn.execute(
            _APPEND,
            {
                "seq": seq,
                "ts": ts,
                "actor": event.actor,
                "action": event.action.value,
                "subject": event.subject,
                "outcome": event.outcome.value,
                "source": event.source,
                "details": details,
                "prev_mac": head.mac,
                "mac": mac,
            },
        )
        conn.execute(_ADVANCE, {"seq": seq, "mac": mac, "head_mac": _head_mac(key, seq, mac)})
        return seq
    except AuditUnavailable:
        raise
    except (SQLAlchemyError, CryptoError) as exc:
        raise AuditUnavailable(
            "the audit log cannot be written, so the action was refused",
            hint="check the database and the vault seal state",
        ) from exc


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    head_seq: int
    first_bad_seq: int | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "head_seq": self.head_seq,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
        }


def _rows(conn: Connection, chunk: int = 2000) -> Iterator[Any]:
    """Every row in seq order, including any forged below seq 1 (verify must see those too)."""
    page = select(t.audit_events).order_by(t.audit_events.c.seq).limit(chunk)
    rows = conn.execute(page).all()
    while rows:
        yield from rows
        rows = conn.execute(page.where(t.audit_events.c.seq > rows[-1].seq)).all()


def verify(conn: Connection, keyring: Keyring) -> VerifyResult:
    """Walk the chain; name the first row that is missing, altered or out of place."""
    key = keyring.audit_key()
    # FOR SHARE holds appends (emit locks the head FOR UPDATE) until the caller's transaction
    # ends, so the walk sees exactly the chain this head vouches for, even under READ COMMITTED.
    head = conn.execute(
        select(t.audit_head).where(t.audit_head.c.id == HEAD_ID).with_for_update(read=True)
    ).first()
    expected, prev, checked = 1, GENESIS, 0

    def bad(seq: int, reason: str) -> VerifyResult:
        return VerifyResult(False, checked, int(head.seq) if head else -1, seq, reason)

    if head is None:
        return bad(0, "the chain head is missing")
    head_ok = head.head_mac == _head_mac(key, int(head.seq), head.mac)
    for row in _rows(conn):
        if row.seq != expected:
            if row.seq < expected:
                return bad(row.seq, f"event {row.seq} is outside the chain")
            return bad(expected, f"event {expected} is missing")
        if row.prev_mac != prev:
            return bad(row.seq, f"event {row.seq} does not link to event {row.seq - 1}")
        mac = chain_mac(
            key,
            _canonical(
                row.seq,
                row.ts,
                row.actor,
                row.action,
                row.subject,
                row.outcome,
                row.source,
                row.details,
                row.prev_mac,
            ),
        )
        if mac != row.mac:
            return bad(row.seq, f"event {row.seq} was altered")
        prev, expected, checked = row.mac, expected + 1, checked + 1
    last = expected - 1
    if not head_ok:
        # The events up to ``last`` chain correctly; the head that vouches for where the chain
        # ends does not, so the first event in doubt is the next one (e.g. a cut tail).
        return bad(last + 1, f"the chain head was altered: events after {last} may be missing")
    if int(head.seq) != last or head.mac != prev:
        if int(head.seq) > last:
            return bad(last + 1, f"events {last + 1}..{head.seq} were cut from the end")
        return bad(int(head.seq) + 1, "events past the recorded head were added")
    return VerifyResult(True, checked, int(head.seq))


def list_events(
    conn: Connection, since: datetime | None = None, limit: int | None = None, after_seq: int = 0
) -> list[dict[str, Any]]:
    q = select(t.audit_events).where(t.audit_events.c.seq > after_seq)
    if since is not None:
        q = q.where(t.audit_events.c.ts >= since.astimezone(UTC).isoformat(timespec="microseconds"))
    q = q.order_by(t.audit_events.c.seq)
    if limit is not None:
        q = q.limit(limit)
    return [
        {
            "seq": r.seq,
            "ts": r.ts,
            "actor": r.actor,
            "action": r.action,
            "subject": r.subject,
            "outcome": r.outcome,
            "source": r.source,
            "details": json.loads(r.details),
            "prev_mac": r.prev_mac,
            "mac": r.mac,
        }
        for r in conn.execute(q)
    ]


__all__ = ["GENESIS", "VerifyResult", "emit", "init_chain", "list_events", "verify"]

"""Session tokens and sessions: the rows a session proxy checks and writes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, insert, select, update

from jitvault.storage import tables as t

_T = t.session_tokens
_S = t.sessions
#: a session's cancel key lives as long as the session: every end clears it
_NO_CANCEL_KEY: dict[str, Any] = {"cancel_id": None, "cancel_key": None, "cancel_key_term": None}
#: statements every login runs (hot path: see jitvault.storage)
_TOKEN_BY_ID = select(_T).where(_T.c.id == bindparam("token_id"))
_SESSION_END = (
    update(_S)
    .where(_S.c.id == bindparam("session_id"), _S.c.ended_at.is_(None))
    .values(ended_at=bindparam("at"), end_reason=bindparam("reason"), **_NO_CANCEL_KEY)
)
_SESSION_GRANT = select(_S.c.grant_id).where(_S.c.id == bindparam("session_id"))
_SESSION_ADD = insert(_S)
_CANCEL_ID_SET = (
    update(_S)
    .where(_S.c.id == bindparam("session_id"), _S.c.ended_at.is_(None))
    .values(cancel_id=bindparam("cancel_id"))
)
_CANCEL_ID_TAKEN = select(_S.c.id).where(_S.c.cancel_id == bindparam("cancel_id"))


def token_add(
    conn: Connection,
    token_id: str,
    grant_id: int,
    secret_hash: str,
    scram_verifier: str,
    single_use: bool,
    at: datetime,
) -> None:
    conn.execute(
        insert(_T).values(
            id=token_id,
            grant_id=grant_id,
            secret_hash=secret_hash,
            scram_verifier=scram_verifier,
            single_use=single_use,
            created_at=at,
        )
    )


def token_find(conn: Connection, token_id: str) -> Row[Any] | None:
    return conn.execute(_TOKEN_BY_ID, {"token_id": token_id}).first()


def token_use(conn: Connection, token_id: str, at: datetime) -> bool:
    """Spend a single-use token: True for exactly one caller, however many race."""
    result = conn.execute(
        update(_T).where(_T.c.id == token_id, _T.c.used_at.is_(None)).values(used_at=at)
    )
    return result.rowcount == 1


def session_add(
    conn: Connection,
    grant_id: int,
    token_id: str,
    protocol: str,
    source: str,
    at: datetime,
    ssh_key_fingerprint: str | None = None,
) -> int:
    """A live session, opened with session token ``token_id`` or (``token_id`` "") with the
    registered SSH key of that fingerprint."""
    result = conn.execute(
        _SESSION_ADD,
        {
            "grant_id": grant_id,
            "token_id": token_id,
            "ssh_key_fingerprint": ssh_key_fingerprint,
            "protocol": protocol,
            "source": source,
            "started_at": at,
        },
    )
    pk = result.inserted_primary_key
    assert pk is not None
    return int(pk[0])


def live_count(conn: Connection, grant_id: int) -> int:
    return int(
        conn.execute(
            select(func.count())
            .select_from(_S)
            .where(_S.c.grant_id == grant_id, _S.c.ended_at.is_(None))
        ).scalar_one()
    )


def live_sessions(conn: Connection, grant_id: int | None = None) -> list[Row[Any]]:
    q = select(_S).where(_S.c.ended_at.is_(None))
    if grant_id is not None:
        q = q.where(_S.c.grant_id == grant_id)
    return list(conn.execute(q.order_by(_S.c.id)).all())


def end_sessions(conn: Connection, grant_id: int, at: datetime, reason: str) -> list[int]:
    """End every live session of a grant; returns their ids (the proxies cut them)."""
    return _end_live(conn, _S.c.grant_id == grant_id, at, reason)


def end_key_sessions(conn: Connection, fingerprint: str, at: datetime, reason: str) -> list[int]:
    """End every live session opened with this SSH key; returns their ids (the proxies cut
    them)."""
    return _end_live(conn, _S.c.ssh_key_fingerprint == fingerprint, at, reason)


def _end_live(conn: Connection, which: Any, at: datetime, reason: str) -> list[int]:
    """The sessions this statement ended, in order: one that a concurrent transaction ended
    first (its client closed meanwhile) is not among them, so each end is recorded once."""
    ended = conn.execute(
        update(_S)
        .where(which, _S.c.ended_at.is_(None))
        .values(ended_at=at, end_reason=reason, **_NO_CANCEL_KEY)
        .returning(_S.c.id)
    )
    return sorted(int(r.id) for r in ended)


def session_end(conn: Connection, session_id: int, at: datetime, reason: str) -> bool:
    result = conn.execute(_SESSION_END, {"session_id": session_id, "at": at, "reason": reason})
    return result.rowcount == 1


def cancel_id_set(conn: Connection, session_id: int, cancel_id: int) -> bool:
    """Name a live session's cancel key ``cancel_id`` (its sealed part is stored apart);
    False if the session has ended."""
    result = conn.execute(_CANCEL_ID_SET, {"session_id": session_id, "cancel_id": cancel_id})
    return result.rowcount == 1


def cancel_id_taken(conn: Connection, cancel_id: int) -> bool:
    return conn.execute(_CANCEL_ID_TAKEN, {"cancel_id": cancel_id}).first() is not None


def cancel_id_session(conn: Connection, cancel_id: int) -> int | None:
    """The live session whose cancel key is named ``cancel_id``, if any."""
    sid = conn.execute(
        select(_S.c.id).where(_S.c.cancel_id == cancel_id, _S.c.ended_at.is_(None))
    ).scalar_one_or_none()
    return None if sid is None else int(sid)


def session_grant(conn: Connection, session_id: int) -> int | None:
    gid = conn.execute(_SESSION_GRANT, {"session_id": session_id}).scalar_one_or_none()
    return None if gid is None else int(gid)


def reserve_event_ids(conn: Connection, n: int) -> list[int]:
    """``n`` unused ids for new session_events rows, increasing (so that the caller can seal
    each row's data, bound to its id, before the one INSERT)."""
    if n <= 0:
        return []
    table = t.session_events
    if conn.dialect.name == "sqlite":
        # a write transaction holds the whole database (BEGIN IMMEDIATE): above the newest id,
        # every id is free, and SQLite would pick the same ones
        top = conn.execute(select(func.max(table.c.id))).scalar_one_or_none() or 0
        return list(range(top + 1, top + n + 1))
    sequence = conn.execute(
        select(func.pg_get_serial_sequence(table.name, table.c.id.name))
    ).scalar_one()
    reserved = conn.execute(
        select(func.nextval(sequence)).select_from(func.generate_series(1, n))
    ).scalars()
    return sorted(int(v) for v in reserved)


def events_insert(
    conn: Connection, rows: list[tuple[int, int, str, datetime, str]], term: int
) -> None:
    """Insert (id, session_id, kind, ts, sealed data) rows, all sealed under key ``term``."""
    if not rows:
        return
    conn.execute(
        insert(t.session_events),
        [
            {"id": i, "session_id": sid, "kind": kind, "ts": at, "data": data, "data_term": term}
            for i, sid, kind, at, data in rows
        ],
    )


def events(conn: Connection, session_id: int) -> list[Row[Any]]:
    return list(
        conn.execute(
            select(t.session_events)
            .where(t.session_events.c.session_id == session_id)
            .order_by(t.session_events.c.id)
        ).all()
    )


def session_rows(
    conn: Connection, user_id: int | None = None, live_only: bool = False, limit: int = 500
) -> list[Row[Any]]:
    q = select(_S, t.grants.c.user_name, t.grants.c.target_name, t.grants.c.name).join(
        t.grants, t.grants.c.id == _S.c.grant_id
    )
    if user_id is not None:
        q = q.where(t.grants.c.user_id == user_id)
    if live_only:
        q = q.where(_S.c.ended_at.is_(None))
    return list(conn.execute(q.order_by(_S.c.id.desc()).limit(limit)).all())


def sessions_seen(conn: Connection, session_ids: list[int], at: datetime) -> None:
    """The heartbeat of the node holding these sessions: each live one was seen ``at``."""
    if session_ids:
        conn.execute(
            update(_S).where(_S.c.id.in_(session_ids), _S.c.ended_at.is_(None)).values(seen_at=at)
        )


def lost_sessions(conn: Connection, before: datetime, limit: int) -> list[int]:
    """Live sessions whose node has not said it holds them since ``before`` (one never seen
    counts from its start), oldest first."""
    last = func.coalesce(_S.c.seen_at, _S.c.started_at)
    q = select(_S.c.id).where(_S.c.ended_at.is_(None), last < before).order_by(_S.c.id).limit(limit)
    return [int(r) for r in conn.execute(q).scalars()]


def ended_among(conn: Connection, session_ids: list[int]) -> dict[int, str]:
    """Which of these sessions have been ended (by revoke, expiry or elsewhere), and why."""
    if not session_ids:
        return {}
    rows = conn.execute(
        select(_S.c.id, _S.c.end_reason).where(_S.c.id.in_(session_ids), _S.c.ended_at.is_not(None))
    ).all()
    return {int(r.id): r.end_reason or "ended" for r in rows}


__all__ = [
    "cancel_id_session",
    "cancel_id_set",
    "cancel_id_taken",
    "end_key_sessions",
    "end_sessions",
    "ended_among",
    "events",
    "events_insert",
    "live_count",
    "live_sessions",
    "lost_sessions",
    "reserve_event_ids",
    "session_add",
    "session_end",
    "session_grant",
    "session_rows",
    "sessions_seen",
    "token_add",
    "token_find",
    "token_use",
]

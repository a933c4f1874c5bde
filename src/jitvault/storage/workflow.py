"""Repositories of the just-in-time workflow: policies, requests, approvals, grants, jobs.

Row locks: :func:`request_lock` takes ``SELECT ... FOR UPDATE`` on the request row (SQLite's
``BEGIN IMMEDIATE`` already serializes writers), so every decision on one request is made by one
transaction at a time. Sweeps and job claims use ``FOR UPDATE SKIP LOCKED`` so that several nodes
share the work without doing any of it twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Select,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from jitvault.domain import AccessKind, AccessRequest, Grant, RequestState
from jitvault.errors import Conflict, NotFound
from jitvault.storage import tables as t
from jitvault.storage.repositories import aware, now

# --- policies -----------------------------------------------------------------------------------


def policy_current(conn: Connection) -> Row[Any] | None:
    return conn.execute(select(t.policies).order_by(t.policies.c.version.desc()).limit(1)).first()


def policy_add(conn: Connection, document: str, sha256: str, created_by: str) -> int:
    current = conn.execute(select(func.max(t.policies.c.version))).scalar_one_or_none() or 0
    version = int(current) + 1
    try:
        conn.execute(
            insert(t.policies).values(
                version=version,
                document=document,
                sha256=sha256,
                created_by=created_by,
                created_at=now(),
            )
        )
    except IntegrityError:
        raise Conflict("another policy was applied at the same time", hint="retry") from None
    return version


#: read at every login (hot path: see jitvault.storage)
_RULE_OF_REQUEST = (
    select(t.policies.c.document, t.access_requests.c.rule)
    .select_from(t.access_requests)
    .join(t.policies, t.policies.c.version == t.access_requests.c.policy_version)
    .where(t.access_requests.c.id == bindparam("request_id"))
)


def policy_rule_of_request(conn: Connection, request_id: int) -> tuple[str, str] | None:
    """The policy document (text) and rule name that decided a request, or None."""
    row = conn.execute(_RULE_OF_REQUEST, {"request_id": request_id}).first()
    if row is None or row.rule is None:
        return None
    return str(row.document), str(row.rule)


def policy_history(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(
            t.policies.c.version,
            t.policies.c.sha256,
            t.policies.c.created_by,
            t.policies.c.created_at,
        ).order_by(t.policies.c.version)
    )
    return [
        {
            "version": r.version,
            "sha256": r.sha256,
            "created_by": r.created_by,
            "created_at": aware(r.created_at),
        }
        for r in rows
    ]


# --- requests -----------------------------------------------------------------------------------

_R = t.access_requests


def request_insert(conn: Connection, **values: Any) -> int:
    values["approver_groups"] = json.dumps(list(values.get("approver_groups", ())))
    result = conn.execute(insert(_R).values(**values))
    pk = result.inserted_primary_key
    assert pk is not None
    return int(pk[0])


#: every login reads its grant and request (hot path: see jitvault.storage)
_APPROVALS = (
    select(t.approvals.c.approver)
    .where(t.approvals.c.request_id == bindparam("request_id"))
    .order_by(t.approvals.c.id)
)


def _approvals(conn: Connection, request_id: int) -> tuple[str, ...]:
    rows = conn.execute(_APPROVALS, {"request_id": request_id})
    return tuple(r.approver for r in rows)


_REQUEST_COLUMNS = (
    _R,
    t.users.c.name.label("requester_name"),
    t.targets.c.name.label("target_name"),
)


def _request(conn: Connection, row: Row[Any]) -> AccessRequest:
    created = aware(row.created_at)
    expires = aware(row.expires_at)
    assert created is not None
    assert expires is not None
    return AccessRequest(
        id=row.id,
        requester_id=row.requester_id,
        requester=row.requester_name,
        target=row.target_name,
        kind=AccessKind(row.kind),
        name=row.name,
        duration=timedelta(seconds=row.duration_s),
        reason=row.reason,
        state=RequestState(row.state),
        created_at=created,
        expires_at=expires,
        start_at=aware(row.start_at),
        break_glass=bool(row.break_glass),
        rule=row.rule,
        explanation=row.explanation,
        required_approvals=row.required_approvals,
        approver_groups=tuple(json.loads(row.approver_groups)),
        max_connections=row.max_connections,
        approvals=_approvals(conn, row.id),
        decided_at=aware(row.decided_at),
        review_required=bool(row.review_required),
        reviewed_by=row.reviewed_by,
        account=row.account,
        end_on_disconnect=bool(row.end_on_disconnect),
        checkout=row.checkout,
    )


_REQUESTS: Any = (
    select(*_REQUEST_COLUMNS)
    .join(t.users, t.users.c.id == _R.c.requester_id)
    .join(t.targets, t.targets.c.id == _R.c.target_id)
)
_REQUEST_BY_ID = _REQUESTS.where(_R.c.id == bindparam("request_id"))
_REQUEST_LOCK = select(_R.c.id).where(_R.c.id == bindparam("request_id")).with_for_update()


def request_lock(conn: Connection, request_id: int) -> AccessRequest:
    """Lock the request row for this transaction and return it."""
    locked = conn.execute(_REQUEST_LOCK, {"request_id": request_id}).scalar_one_or_none()
    if locked is None:
        raise NotFound(f"request {request_id} does not exist", hint="see 'jitvault request list'")
    return request_get(conn, request_id)


def request_try_lock(conn: Connection, request_id: int) -> bool:
    """Lock the request row unless another transaction holds it (then False, at once)."""
    locked = conn.execute(
        select(_R.c.id).where(_R.c.id == request_id).with_for_update(skip_locked=True)
    ).scalar_one_or_none()
    return locked is not None


def request_get(conn: Connection, request_id: int) -> AccessRequest:
    row = conn.execute(_REQUEST_BY_ID, {"request_id": request_id}).first()
    if row is None:
        raise NotFound(f"request {request_id} does not exist", hint="see 'jitvault request list'")
    return _request(conn, row)


def request_list(
    conn: Connection,
    requester_id: int | None = None,
    states: list[RequestState] | None = None,
    limit: int = 500,
) -> list[AccessRequest]:
    q = _REQUESTS
    if requester_id is not None:
        q = q.where(_R.c.requester_id == requester_id)
    if states:
        q = q.where(_R.c.state.in_([s.value for s in states]))
    rows = conn.execute(q.order_by(_R.c.id.desc()).limit(limit)).all()
    return [_request(conn, r) for r in rows]


def request_update(conn: Connection, request_id: int, **values: Any) -> None:
    if isinstance(values.get("state"), RequestState):
        values["state"] = values["state"].value
    conn.execute(update(_R).where(_R.c.id == request_id).values(**values))


def approval_add(
    conn: Connection, request_id: int, approver_id: int, approver: str, comment: str
) -> bool:
    """Record an approval; False if this approver had approved already (they count once).

    The caller holds the request's row lock, so check-then-insert cannot race.
    """
    exists = conn.execute(
        select(t.approvals.c.id).where(
            t.approvals.c.request_id == request_id, t.approvals.c.approver_id == approver_id
        )
    ).first()
    if exists is not None:
        return False
    conn.execute(
        insert(t.approvals).values(
            request_id=request_id,
            approver_id=approver_id,
            approver=approver,
            comment=comment,
            created_at=now(),
        )
    )
    return True


def approval_count(conn: Connection, request_id: int) -> int:
    return int(
        conn.execute(
            select(func.count())
            .select_from(t.approvals)
            .where(t.approvals.c.request_id == request_id)
        ).scalar_one()
    )


# --- grants -------------------------------------------------------------------------------------

_G = t.grants


def grant_insert(conn: Connection, **values: Any) -> int:
    try:
        result = conn.execute(insert(_G).values(**values))
    except IntegrityError:
        raise Conflict("this request already has a grant") from None
    pk = result.inserted_primary_key
    assert pk is not None
    return int(pk[0])


def _grant(row: Row[Any]) -> Grant:
    starts, expires = aware(row.starts_at), aware(row.expires_at)
    assert starts is not None
    assert expires is not None
    return Grant(
        id=row.id,
        request_id=row.request_id,
        user_id=row.user_id,
        user=row.user_name,
        target=row.target_name,
        kind=AccessKind(row.kind),
        name=row.name,
        starts_at=starts,
        expires_at=expires,
        state=RequestState(row.state),
        max_connections=row.max_connections,
        break_glass=bool(row.break_glass),
        ended_at=aware(row.ended_at),
        end_reason=row.end_reason,
        account=row.account,
        end_on_disconnect=bool(row.end_on_disconnect),
        queued=bool(row.queued),
        provisioned_at=aware(row.provisioned_at),
        role_held_before=None if row.role_held_before is None else bool(row.role_held_before),
        template=json.loads(row.lease_template) if row.lease_template else None,
    )


_GRANTS: Any = select(
    *[c for c in _G.c if c.name not in ("lease_secret", "lease_secret_term")], _R.c.state
).join(_R, _R.c.id == _G.c.request_id)
_GRANT_BY_ID = _GRANTS.where(_G.c.id == bindparam("grant_id"))
_GRANT_OF_REQUEST = _GRANTS.where(_G.c.request_id == bindparam("request_id"))


def grant_get(conn: Connection, grant_id: int) -> Grant:
    row = conn.execute(_GRANT_BY_ID, {"grant_id": grant_id}).first()
    if row is None:
        raise NotFound(f"grant {grant_id} does not exist", hint="see 'jitvault grant list'")
    return _grant(row)


def grant_for_request(conn: Connection, request_id: int) -> Grant | None:
    row = conn.execute(_GRANT_OF_REQUEST, {"request_id": request_id}).first()
    return None if row is None else _grant(row)


def grant_list(
    conn: Connection,
    user_id: int | None = None,
    states: list[RequestState] | None = None,
    limit: int = 1000,
) -> list[Grant]:
    q = _GRANTS
    if user_id is not None:
        q = q.where(_G.c.user_id == user_id)
    if states:
        q = q.where(_R.c.state.in_([s.value for s in states]))
    return [_grant(r) for r in conn.execute(q.order_by(_G.c.id.desc()).limit(limit))]


def grant_update(conn: Connection, grant_id: int, **values: Any) -> None:
    conn.execute(update(_G).where(_G.c.id == grant_id).values(**values))


def live_elevations(conn: Connection, grant: Grant) -> list[Grant]:
    """Other live grants giving the same role to the same account on the same target."""
    q = _GRANTS.where(
        _G.c.id != grant.id,
        _G.c.target_name == grant.target,
        _G.c.kind == AccessKind.ROLE.value,
        _G.c.name == grant.name,
        _G.c.account == grant.account,
        _R.c.state.in_([RequestState.APPROVED.value, RequestState.ACTIVE.value]),
    )
    return [_grant(r) for r in conn.execute(q)]


# --- exclusive checkout of shared accounts ------------------------------------------------------

_C = t.account_checkouts


def checkout_take(conn: Connection, account_id: int, grant_id: int, at: datetime) -> bool:
    """Check the account out to the grant; False if another grant holds it.

    ``INSERT ... ON CONFLICT DO NOTHING`` on the primary key (the account): racing transactions
    wait for each other on the key and exactly one row wins, on SQLite and PostgreSQL alike,
    without aborting the loser's transaction.
    """
    values = {"account_id": account_id, "grant_id": grant_id, "since": at}
    stmt: Any
    if conn.dialect.name == "postgresql":
        stmt = pg_insert(_C).values(**values).on_conflict_do_nothing()
    else:
        stmt = sqlite_insert(_C).values(**values).on_conflict_do_nothing()
    conn.execute(stmt)
    # whose row is there now tells who won (rowcount is not reliable for DO NOTHING everywhere)
    holder = conn.execute(select(_C.c.grant_id).where(_C.c.account_id == account_id)).scalar()
    return bool(holder == grant_id)


def checkout_holder(conn: Connection, account_id: int) -> Grant | None:
    """The grant holding the account, if any."""
    gid = conn.execute(
        select(_C.c.grant_id).where(_C.c.account_id == account_id)
    ).scalar_one_or_none()
    return None if gid is None else grant_get(conn, int(gid))


def checkout_release(conn: Connection, grant_id: int) -> int | None:
    """Check in what the grant holds; the account id, or None if it held nothing."""
    account_id = conn.execute(
        select(_C.c.account_id).where(_C.c.grant_id == grant_id).with_for_update()
    ).scalar_one_or_none()
    if account_id is None:
        return None
    conn.execute(delete(_C).where(_C.c.grant_id == grant_id))
    return int(account_id)


def checkout_held_by(conn: Connection, grant_id: int) -> bool:
    return (
        conn.execute(select(_C.c.account_id).where(_C.c.grant_id == grant_id)).first() is not None
    )


def _waiting() -> ColumnElement[bool]:
    """:attr:`Grant.waiting` as SQL (the query joins the request and its grant)."""
    return and_(_G.c.queued.is_(True), _R.c.state == RequestState.APPROVED.value)


def next_queued(conn: Connection, target_id: int, account: str, at: datetime) -> list[int]:
    """Request ids of grants queued for the account whose window has not ended at ``at``,
    oldest first (those whose window ended are the sweep's to lapse)."""
    q = (
        select(_R.c.id)
        .join(_G, _G.c.request_id == _R.c.id)
        .where(
            _waiting(),
            _G.c.target_id == target_id,
            _G.c.kind == AccessKind.ACCOUNT.value,
            _G.c.name == account,
            _G.c.expires_at > at,
        )
        .order_by(_G.c.id)
    )
    return [int(r) for r in conn.execute(q).scalars()]


# --- sweeps (claimed with SKIP LOCKED) ------------------------------------------------------------
# Each kind of due row is one query: claimed in batches (FOR UPDATE SKIP LOCKED) by the sweep's
# write transactions, and asked about all at once, unlocked, by sweep_due (an idle pass).


def _pending_due(at: datetime) -> Select[Any]:
    return select(_R.c.id).where(_R.c.state == RequestState.PENDING.value, _R.c.expires_at <= at)


def _start_due(at: datetime) -> Select[Any]:
    return (
        select(_R.c.id)
        .join(_G, _G.c.request_id == _R.c.id)
        # a window that has passed entirely is due_to_end's; selecting it here too would make
        # the sweep re-select the same full batch forever
        .where(
            _R.c.state == RequestState.APPROVED.value,
            _G.c.queued.is_(False),  # a queued grant starts at its account's check-in
            _G.c.starts_at <= at,
            _G.c.expires_at > at,
        )
    )


def _end_due(at: datetime) -> Select[Any]:
    return (
        select(_R.c.id)
        .join(_G, _G.c.request_id == _R.c.id)
        .where(
            _R.c.state.in_([RequestState.ACTIVE.value, RequestState.APPROVED.value]),
            _G.c.queued.is_(False),  # its window is set when it leaves the queue
            _G.c.expires_at <= at,
        )
    )


def _queue_lapse_due(at: datetime) -> Select[Any]:
    return (
        select(_R.c.id)
        .join(_G, _G.c.request_id == _R.c.id)
        .where(_waiting(), _G.c.expires_at <= at)  # still waiting when its window ended
    )


def _warning_due(at: datetime, window: timedelta) -> Select[Any]:
    return (
        select(_G.c.id)
        .join(_R, _R.c.id == _G.c.request_id)
        .where(
            _R.c.state == RequestState.ACTIVE.value,
            _G.c.expiry_warned.is_(False),
            _G.c.expires_at <= at + window,
            _G.c.expires_at > at,
        )
    )


@dataclass(frozen=True)
class SweepDue:
    """What a sweep pass has to do, asked in one query."""

    pending: bool  # pending requests to lapse
    start: bool  # grants to start
    end: bool  # grants to end
    queue_lapse: bool  # queued grants whose window ended before their account was free
    warning: bool  # grants to warn of


def sweep_due(conn: Connection, at: datetime, window: timedelta) -> SweepDue:
    """Is anything due? One query, no lock taken: a row another node holds counts, and the
    claim skips it."""
    row = conn.execute(
        select(
            exists(_pending_due(at)),
            exists(_start_due(at)),
            exists(_end_due(at)),
            exists(_queue_lapse_due(at)),
            exists(_warning_due(at, window)),
        )
    ).one()
    return SweepDue(*(bool(v) for v in row))


def due_pending(conn: Connection, at: datetime, limit: int) -> list[int]:
    q = _pending_due(at).order_by(_R.c.id).limit(limit).with_for_update(skip_locked=True)
    return [int(r) for r in conn.execute(q).scalars()]


def due_to_start(conn: Connection, at: datetime, limit: int) -> list[int]:
    q = _start_due(at).order_by(_R.c.id).limit(limit).with_for_update(of=_R, skip_locked=True)
    return [int(r) for r in conn.execute(q).scalars()]


def due_to_end(conn: Connection, at: datetime, limit: int) -> list[int]:
    q = _end_due(at).order_by(_G.c.expires_at).limit(limit).with_for_update(of=_R, skip_locked=True)
    return [int(r) for r in conn.execute(q).scalars()]


def due_queue_lapse(conn: Connection, at: datetime, limit: int) -> list[int]:
    q = _queue_lapse_due(at).order_by(_R.c.id).limit(limit).with_for_update(of=_R, skip_locked=True)
    return [int(r) for r in conn.execute(q).scalars()]


def due_expiry_warning(conn: Connection, at: datetime, window: timedelta, limit: int) -> list[int]:
    q = _warning_due(at, window).limit(limit).with_for_update(of=_G, skip_locked=True)
    return [int(r) for r in conn.execute(q).scalars()]


# --- jobs ---------------------------------------------------------------------------------------

_J = t.jobs


def job_enqueue(
    conn: Connection,
    kind: str,
    payload: dict[str, Any],
    run_after: datetime | None = None,
    max_attempts: int = 6,
) -> int:
    ts = now()
    result = conn.execute(
        insert(_J).values(
            kind=kind,
            payload=json.dumps(payload, sort_keys=True),
            state="queued",
            attempts=0,
            max_attempts=max_attempts,
            run_after=run_after or ts,
            created_at=ts,
            updated_at=ts,
        )
    )
    pk = result.inserted_primary_key
    assert pk is not None
    return int(pk[0])


def _job_due(at: datetime) -> tuple[ColumnElement[bool], ...]:
    return (
        _J.c.run_after <= at,
        (_J.c.state == "queued") | and_(_J.c.state == "running", _J.c.locked_until < at),
    )


def job_due(conn: Connection, at: datetime) -> bool:
    """Is a job due (what :func:`job_claim` would claim, rows other nodes hold included)? No
    lock taken."""
    return bool(conn.execute(select(exists(select(_J.c.id).where(*_job_due(at))))).scalar())


def job_claim(
    conn: Connection, worker: str, at: datetime, lease: timedelta, limit: int
) -> list[dict[str, Any]]:
    """Claim due jobs: queued ones, and running ones whose claimant's lease ran out (crashed)."""
    q = (
        select(_J.c.id, _J.c.kind, _J.c.payload, _J.c.attempts, _J.c.max_attempts)
        .where(*_job_due(at))
        # credential cleanup before notifications: a slow webhook must not delay removal
        .order_by(_J.c.kind == "notify", _J.c.run_after, _J.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = conn.execute(q).all()
    for r in rows:
        conn.execute(
            update(_J)
            .where(_J.c.id == r.id)
            .values(
                state="running",
                locked_by=worker,
                locked_until=at + lease,
                attempts=r.attempts + 1,
                updated_at=at,
            )
        )
    return [
        {
            "id": r.id,
            "kind": r.kind,
            "payload": json.loads(r.payload),
            "attempt": r.attempts + 1,
            "max_attempts": r.max_attempts,
        }
        for r in rows
    ]


def job_finish(conn: Connection, job_id: int, state: str, error: str | None = None) -> None:
    conn.execute(
        update(_J)
        .where(_J.c.id == job_id)
        .values(state=state, last_error=error, locked_by=None, locked_until=None, updated_at=now())
    )


def job_retry(conn: Connection, job_id: int, run_after: datetime, error: str) -> None:
    conn.execute(
        update(_J)
        .where(_J.c.id == job_id)
        .values(
            state="queued",
            run_after=run_after,
            last_error=error,
            locked_by=None,
            locked_until=None,
            updated_at=now(),
        )
    )


def job_list(conn: Connection, states: list[str] | None = None, limit: int = 500) -> list[Any]:
    q = select(_J)
    if states:
        q = q.where(_J.c.state.in_(states))
    return list(conn.execute(q.order_by(_J.c.id).limit(limit)).all())


__all__ = [
    "SweepDue",
    "approval_add",
    "approval_count",
    "checkout_held_by",
    "checkout_holder",
    "checkout_release",
    "checkout_take",
    "due_expiry_warning",
    "due_pending",
    "due_queue_lapse",
    "due_to_end",
    "due_to_start",
    "grant_for_request",
    "grant_get",
    "grant_insert",
    "grant_list",
    "grant_update",
    "job_claim",
    "job_due",
    "job_enqueue",
    "job_finish",
    "job_list",
    "job_retry",
    "live_elevations",
    "next_queued",
    "policy_add",
    "policy_current",
    "policy_history",
    "request_get",
    "request_insert",
    "request_list",
    "request_lock",
    "request_try_lock",
    "request_update",
    "sweep_due",
]

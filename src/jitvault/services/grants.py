"""Grants (leases): list, revoke, and the sweeper that starts and ends them on time.

Ending a grant queues its cleanup (rotate the shared account, drop the ephemeral one, revoke the
elevation) as a background job in the same transaction, so a crash cannot end a grant without
its cleanup, nor run a cleanup for a grant that did not end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from jitvault.audit import Action, AuditEvent
from jitvault.domain import (
    LIVE_GRANT_STATES,
    Grant,
    Permission,
    Principal,
    RequestState,
    allowed,
    authorize,
    transition,
)
from jitvault.errors import ValidationError
from jitvault.services import notify, session_ends
from jitvault.services.node import Node, Tx
from jitvault.services.requests import (
    activate,
    check_in,
    lapse_if_due,
    lapse_queued,
    summary,
    withdraw_pending,
)
from jitvault.storage import session_store, workflow

log = logging.getLogger(__name__)

SWEEP_BATCH = 200


def list_grants(node: Node, actor: Principal, live: bool = True, mine: bool = False) -> list[Grant]:
    see_all = allowed(actor, Permission.GRANT_READ_ANY) and not mine
    states = list(LIVE_GRANT_STATES) if live else None
    with node.read() as conn:
        return workflow.grant_list(conn, None if see_all else actor.user_id, states)


def get_grant(node: Node, actor: Principal, grant_id: int) -> Grant:
    with node.read() as conn:
        g = workflow.grant_get(conn, grant_id)
    if g.user_id != actor.user_id:
        authorize(actor, Permission.GRANT_READ_ANY)
    return g


def session_end_reason(state: RequestState, reason: str) -> str:
    """Why a live session ended with its grant: ``grant <state>: <the grant's reason>``."""
    return f"grant {state.value}: {reason}"


def grant_end_of(end_reason: str) -> RequestState | None:
    """The state a session's grant ended in, if that is why the session ended (its end reason
    is :func:`session_end_reason`'s); else None. The grant's reason, which may be anyone's
    words, is not looked at."""
    head, sep, _ = end_reason.partition(": ")
    if not sep or not head.startswith("grant "):
        return None
    try:
        return RequestState(head.removeprefix("grant "))
    except ValueError:
        return None


def _finish(
    node: Node,
    tx: Tx,
    request_id: int,
    new: RequestState,
    at: datetime,
    by: str,
    reason: str,
    source: str = "",
) -> Grant:
    r = workflow.request_get(tx.conn, request_id)
    transition(r.state, new)
    grant = workflow.grant_for_request(tx.conn, request_id)
    assert grant is not None
    workflow.request_update(tx.conn, request_id, state=new)
    workflow.grant_update(tx.conn, grant.id, ended_at=at, end_reason=reason)
    # live sessions end with their grant, in the same transaction; their proxies cut them
    cut_reason = session_end_reason(new, reason)
    cut = session_store.end_sessions(tx.conn, grant.id, at, cut_reason)
    started = r.state == RequestState.ACTIVE
    if started:
        # only a grant that was in use has something to clean up; its shared account is
        # checked in by the cleanup, after the rotation committed
        workflow.job_enqueue(
            tx.conn,
            "grant.cleanup",
            {"grant_id": grant.id},
            run_after=at,
            max_attempts=node.settings.workflow.cleanup_max_attempts,
        )
    tx.emit(
        AuditEvent(
            Action.GRANT_REVOKED if new == RequestState.REVOKED else Action.GRANT_ENDED,
            actor=by,
            subject=f"grant:{grant.id}",
            source=source,
            details={
                "request_id": request_id,
                "reason": reason,
                "at": at.isoformat(),
                "cleanup_queued": started,
                "sessions_cut": cut,
            },
        )
    )
    session_ends.audit_ended(tx, cut, cut_reason, actor=by)
    if not started:
        check_in(tx, grant.id, at)  # never used: nothing to rotate
    if new == RequestState.REVOKED:
        notify.notify(
            node,
            tx,
            "grant.revoked",
            {**summary(r), "grant_id": grant.id, "reason": reason, "by": by},
        )
    return workflow.grant_get(tx.conn, grant.id)


def revoke_grant(
    node: Node, actor: Principal, grant_id: int, reason: str, source: str = ""
) -> Grant:
    """Cut access now: the grant ends, its sessions are cut and its cleanup is queued."""
    authorize(actor, Permission.GRANT_REVOKE)
    if not reason.strip():
        raise ValidationError("a reason is required to revoke", hint='use --reason "..."')
    with node.write() as tx:
        g = workflow.grant_get(tx.conn, grant_id)
        workflow.request_lock(tx.conn, g.request_id)
        return _finish(
            node, tx, g.request_id, RequestState.REVOKED, node.clock(), actor.name, reason, source
        )


def withdraw_user_access(
    node: Node, tx: Tx, user_id: int, by: str, reason: str, source: str = ""
) -> tuple[list[int], list[int]]:
    """In the caller's transaction: revoke every live grant of the user (their sessions are
    cut, their cleanups queued) and cancel every pending request. Returns (revoked grant ids,
    cancelled request ids)."""
    at = node.clock()
    revoked: list[int] = []
    cancelled: list[int] = []
    open_states = [RequestState.PENDING, *LIVE_GRANT_STATES]
    for listed in workflow.request_list(tx.conn, user_id, open_states, limit=100_000):
        r = workflow.request_lock(tx.conn, listed.id)  # its state again, under the lock
        if r.state in LIVE_GRANT_STATES:
            revoked.append(_finish(node, tx, r.id, RequestState.REVOKED, at, by, reason, source).id)
        elif r.state == RequestState.PENDING:
            withdraw_pending(tx, r, at, by, reason, source)
            cancelled.append(r.id)
    return revoked, cancelled


def end_on_last_disconnect(node: Node, tx: Tx, grant_id: int, session_id: int) -> bool:
    """End a grant made with ``--end-on-disconnect`` whose last live session just closed (in
    the transaction that closed it); its end, cleanup and audit are any grant end's."""
    grant = workflow.grant_get(tx.conn, grant_id)
    if not grant.end_on_disconnect:
        return False
    r = workflow.request_lock(tx.conn, grant.request_id)  # serializes with revoke and expiry
    if r.state != RequestState.ACTIVE or session_store.live_count(tx.conn, grant_id):
        return False
    _finish(
        node,
        tx,
        r.id,
        RequestState.ENDED,
        node.clock(),
        "system",
        f"last session closed (session {session_id}, end-on-disconnect)",
    )
    return True


@dataclass
class SweepResult:
    expired_requests: int = 0
    started: int = 0
    ended: int = 0
    #: queued grants whose window ended before their account was checked in
    lapsed: int = 0
    warned: int = 0

    @property
    def total(self) -> int:
        return self.expired_requests + self.started + self.ended + self.lapsed + self.warned


def sweep(
    node: Node,
    at: datetime | None = None,
    batch: int = SWEEP_BATCH,
    max_batches: int | None = None,
) -> SweepResult:
    """One pass: lapse stale pending requests, start scheduled grants, end expired ones, lapse
    queued grants whose window ended, and warn of grants about to expire. Each batch is one
    transaction; rows other nodes hold are skipped (SKIP LOCKED), so nodes share the sweep
    without doing anything twice. One read asks first which are due: an idle pass takes no
    write lock."""
    at = at or node.clock()
    out = SweepResult()
    budget = [max_batches if max_batches is not None else -1]

    def more(ids: list[int]) -> bool:
        """Another batch? Not when this one was short, nor when the pass's budget is spent."""
        budget[0] -= 1
        return len(ids) == batch and budget[0] != 0

    warn = timedelta(seconds=node.settings.workflow.expiry_warning_seconds)
    with node.read() as conn:
        due = workflow.sweep_due(conn, at, warn)
    while due.pending:
        with node.write() as tx:
            ids = workflow.due_pending(tx.conn, at, batch)
            for rid in ids:
                r = workflow.request_get(tx.conn, rid)
                out.expired_requests += lapse_if_due(node, tx, r, at)
        if not more(ids):
            break
    while due.start:
        with node.write() as tx:
            ids = workflow.due_to_start(tx.conn, at, batch)
            for rid in ids:
                g = workflow.grant_for_request(tx.conn, rid)
                assert g is not None
                if g.expires_at > at:
                    activate(tx, rid, g.id, at)
                    out.started += 1
        if not more(ids):
            break
    while due.end:
        with node.write() as tx:
            ids = workflow.due_to_end(tx.conn, at, batch)
            for rid in ids:
                _finish(node, tx, rid, _end_state(tx, rid), at, "system", "expired")
                out.ended += 1
        if not more(ids):
            break
    while due.queue_lapse:
        with node.write() as tx:
            ids = workflow.due_queue_lapse(tx.conn, at, batch)
            for rid in ids:
                out.lapsed += lapse_queued(node, tx, workflow.request_get(tx.conn, rid), at)
        if not more(ids):
            break
    if due.warning:
        with node.write() as tx:
            for gid in workflow.due_expiry_warning(tx.conn, at, warn, batch):
                g = workflow.grant_get(tx.conn, gid)
                workflow.grant_update(tx.conn, gid, expiry_warned=True)
                r = workflow.request_get(tx.conn, g.request_id)
                notify.notify(
                    node,
                    tx,
                    "grant.expiring",
                    {**summary(r), "grant_id": gid, "expires_at": g.expires_at.isoformat()},
                )
                out.warned += 1
    if out.total:
        log.info("sweep: %s", out)
    return out


def _end_state(tx: Tx, request_id: int) -> RequestState:
    r = workflow.request_get(tx.conn, request_id)
    # a scheduled grant whose window passed unused is ended too (approved -> revoked would
    # misname it; approved -> active -> ended keeps the machine honest)
    if r.state == RequestState.APPROVED:
        grant = workflow.grant_for_request(tx.conn, request_id)
        assert grant is not None
        activate(tx, request_id, grant.id, grant.starts_at, provision=False)
    return RequestState.ENDED


__all__ = [
    "SweepResult",
    "end_on_last_disconnect",
    "get_grant",
    "grant_end_of",
    "list_grants",
    "revoke_grant",
    "session_end_reason",
    "sweep",
    "withdraw_user_access",
]

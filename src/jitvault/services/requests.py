"""Access requests: create (policy decides), approve (N of M, never oneself), deny, cancel,
review. Every decision on a request is made under that request's row lock, so racing
approvals, denials and expiry have exactly one outcome.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from jitvault.audit import Action, AuditEvent
from jitvault.audit import Outcome as AuditOutcome
from jitvault.crypto import generate_secret
from jitvault.domain import (
    AccessKind,
    AccessRequest,
    Account,
    AccountMode,
    AccountStatus,
    Decision,
    Grant,
    Outcome,
    Permission,
    PolicyDocument,
    Principal,
    RequestState,
    allowed,
    authorize,
    check_can_approve,
    ephemeral_username,
    evaluate,
    transition,
    validate_account_name,
)
from jitvault.errors import Conflict, Forbidden, ValidationError
from jitvault.services import notify
from jitvault.services.node import Node, Tx
from jitvault.services.policies import active_policy, gather_facts
from jitvault.storage import repositories as repo
from jitvault.storage import sealed, templates, workflow
from jitvault.storage.tables import GRANT_LEASE_SECRET

MAX_REASON = 2000
MAX_DURATION = timedelta(days=31)
MAX_SCHEDULE_AHEAD = timedelta(days=90)


class CheckedOut(Conflict):
    """The shared account is held by another live grant (exclusive checkout)."""

    code = "checked_out"


@dataclass(frozen=True)
class NewRequest:
    target: str
    kind: AccessKind
    name: str
    duration: timedelta
    reason: str
    start_at: datetime | None = None
    break_glass: bool = False
    #: elevation (``--role``): the requester's own account on the target that gets the role
    #: (named as the requester's jitvault user; the default)
    account: str | None = None
    #: the grant ends when its last session closes
    end_on_disconnect: bool = False


def _validate(req: NewRequest, at: datetime) -> None:
    if not req.reason.strip():
        raise ValidationError("a reason is required", hint='use --reason "INC-1234 ..."')
    if len(req.reason) > MAX_REASON:
        raise ValidationError(f"the reason is longer than {MAX_REASON} characters")
    if not timedelta(0) < req.duration <= MAX_DURATION:
        raise ValidationError("the duration must be positive and at most 31 days")
    validate_account_name(req.name)
    if req.kind == AccessKind.ROLE:
        if req.account:
            validate_account_name(req.account)
    elif req.account:
        raise ValidationError(
            "--account goes alone (a shared account) or with --role (your own), not with "
            "--ephemeral"
        )
    if req.start_at is not None:
        if req.start_at.tzinfo is None:
            raise ValidationError("--start-at needs a time zone (e.g. 2026-11-23T09:00Z)")
        if req.start_at < at - timedelta(minutes=1):
            raise ValidationError("--start-at is in the past")
        if req.start_at > at + MAX_SCHEDULE_AHEAD:
            raise ValidationError("--start-at is more than 90 days ahead")
        if req.break_glass:
            raise ValidationError("break-glass access starts now; drop --start-at")


def summary(r: AccessRequest) -> dict[str, Any]:
    """What notifications say about a request: no secrets, no free-text beyond the reason."""
    return {
        "request_id": r.id,
        "requester": r.requester,
        "target": r.target,
        "kind": r.kind.value,
        "name": r.name,
        "duration_seconds": int(r.duration.total_seconds()),
        "reason": r.reason,
        "state": r.state.value,
        "rule": r.rule,
        "break_glass": r.break_glass,
    }


def create_request(
    node: Node, actor: Principal, req: NewRequest, source: str = ""
) -> AccessRequest:
    """File a request; the active policy auto-approves, routes to approvers, or denies it."""
    authorize(actor, Permission.REQUEST_CREATE)
    at = node.clock()
    _validate(req, at)
    with node.write() as tx:
        target = repo.target_get(tx.conn, req.target)
        if req.kind == AccessKind.ACCOUNT:
            account = repo.account_get(tx.conn, target.name, req.name)
            if account.status == AccountStatus.NEEDS_OPERATOR:
                raise Conflict(
                    f"account {target.name}/{req.name} needs an operator: its vaulted secret "
                    "does not log in",
                    hint="an admin sets it with 'jitvault account set-secret'",
                )
            if account.mode != AccountMode.INJECTED:
                raise ValidationError(
                    f"account {target.name}/{req.name} is {account.mode.value}, not a shared "
                    "(injected) account",
                    hint="use --role for elevation or --ephemeral for a template",
                )
        elif req.kind == AccessKind.ROLE:
            # An elevation is of one's own account, which bears one's jitvault user name on
            # the target (registered by an admin with mode elevation and its password): that is
            # the binding between a person and an account, so nobody elevates someone else's.
            own_name = req.account or actor.name
            if own_name != actor.name:
                raise Forbidden(
                    f"an elevation gives a role to your own account ({actor.name!r}), "
                    f"not to {own_name!r}",
                    hint="drop --account, or give your own user name",
                )
            req = replace(req, account=own_name)
            own = repo.account_get(tx.conn, target.name, own_name)
            if own.mode != AccountMode.ELEVATION:
                raise ValidationError(
                    f"account {target.name}/{req.account} is {own.mode.value}; an elevation "
                    "needs an account of mode elevation",
                    hint="an admin registers it with 'jitvault account add ... --mode elevation'",
                )
        else:
            templates.template_get(tx.conn, target.name, req.name)
        facts = gather_facts(
            tx.conn,
            actor.name,
            target.name,
            req.kind,
            req.name,
            req.duration,
            req.reason,
            at,
            req.break_glass,
        )
        policy = active_policy(tx.conn)
        decision = evaluate(policy.document if policy else PolicyDocument(), facts)
        if policy is None:
            decision = Decision(Outcome.DENY, None, "no policy has been applied (deny by default)")
        request_id = workflow.request_insert(
            tx.conn,
            requester_id=actor.user_id,
            target_id=target.id,
            kind=req.kind.value,
            name=req.name,
            duration_s=int(req.duration.total_seconds()),
            reason=req.reason,
            state=RequestState.PENDING.value,
            created_at=at,
            expires_at=at + decision.request_ttl,
            start_at=req.start_at,
            break_glass=req.break_glass,
            policy_version=policy.version if policy else None,
            rule=decision.rule,
            explanation=decision.explanation,
            required_approvals=decision.required_approvals,
            approver_groups=decision.approver_groups,
            max_connections=decision.max_connections,
            review_required=decision.break_glass,
            account=req.account,
            end_on_disconnect=req.end_on_disconnect,
            checkout=decision.checkout,
        )
        tx.emit(
            AuditEvent(
                Action.REQUEST_CREATED,
                actor=actor.name,
                subject=f"request:{request_id}",
                source=source,
                details={
                    "target": target.name,
                    "kind": req.kind.value,
                    "name": req.name,
                    "duration_seconds": int(req.duration.total_seconds()),
                    "reason": req.reason,
                    "break_glass": req.break_glass,
                    "account": req.account,
                    "end_on_disconnect": req.end_on_disconnect,
                    "policy_version": policy.version if policy else None,
                    "decision": decision.as_dict(),
                },
            )
        )
        created = workflow.request_get(tx.conn, request_id)
        notify.notify(node, tx, "request.created", summary(created))
        if decision.outcome == Outcome.DENY:
            _set_state(tx, created, RequestState.DENIED, at, "policy", decision.explanation)
            tx.emit(
                AuditEvent(
                    Action.REQUEST_DENIED,
                    actor="policy",
                    subject=f"request:{request_id}",
                    outcome=AuditOutcome.DENIED,
                    source=source,
                    details={"rule": decision.rule, "reason": decision.explanation},
                )
            )
        elif decision.outcome == Outcome.AUTO_APPROVE:
            if decision.break_glass:
                tx.emit(
                    AuditEvent(
                        Action.BREAK_GLASS,
                        actor=actor.name,
                        subject=f"request:{request_id}",
                        source=source,
                        details={
                            "rule": decision.rule,
                            "reason": req.reason,
                            "review_required": True,
                        },
                    )
                )
            _approve(node, tx, created, at, "policy", decision.explanation, source)
            if decision.break_glass:
                # announced after approval, so the payload says what happened: active
                notify.notify(
                    node, tx, "break_glass", summary(workflow.request_get(tx.conn, request_id))
                )
        result = workflow.request_get(tx.conn, request_id)
        if result.state != RequestState.PENDING:
            notify.notify(node, tx, "request.decided", summary(result))
        return result


def _set_state(
    tx: Tx, r: AccessRequest, new: RequestState, at: datetime, by: str, note: str = ""
) -> None:
    transition(r.state, new)
    values: dict[str, Any] = {"state": new}
    if r.state == RequestState.PENDING:
        values.update(decided_at=at, decided_by=by, decision_note=note)
    workflow.request_update(tx.conn, r.id, **values)


def _approve(
    node: Node, tx: Tx, r: AccessRequest, at: datetime, by: str, note: str, source: str
) -> None:
    """pending -> approved, create the grant (a lease), and start it if its time has come.

    The lease gets what its end needs before anything is done on the target: the account name
    (``jv_<template>_<grant id>`` for an ephemeral grant, whose secret the core generates here,
    encrypted), and a copy of the template. A shared account is checked out to the grant here,
    or the grant queues for it, or the approval is refused (the policy's ``checkout``).
    """
    _set_state(tx, r, RequestState.APPROVED, at, by, note)
    target = repo.target_get(tx.conn, r.target)
    starts = max(r.start_at or at, at)
    template = (
        templates.template_get(tx.conn, target.name, r.name)
        if r.kind == AccessKind.EPHEMERAL
        else None
    )
    grant_id = workflow.grant_insert(
        tx.conn,
        request_id=r.id,
        user_id=r.requester_id,
        user_name=r.requester,
        target_id=target.id,
        target_name=target.name,
        target_kind=target.kind,
        kind=r.kind.value,
        name=r.name,
        starts_at=starts,
        expires_at=starts + r.duration,
        max_connections=r.max_connections,
        break_glass=r.break_glass,
        expiry_warned=False,
        account={AccessKind.ACCOUNT: r.name, AccessKind.ROLE: r.account}.get(r.kind),
        end_on_disconnect=r.end_on_disconnect,
        lease_template=json.dumps(template.snapshot()) if template else None,
    )
    queued = checked_out = False
    if r.kind == AccessKind.ACCOUNT:
        account = repo.account_get(tx.conn, target.name, r.name)
        # taken now (the approval's event holds the audit head: the lock order of
        # _check_out_queued), audited after the grant it goes to
        checked_out = workflow.checkout_take(tx.conn, account.id, grant_id, at)
        if not checked_out:
            if r.checkout != "queue":
                _refuse_if_checked_out(tx, account)
                raise CheckedOut(f"{account.username} is checked out by another grant")
            queued = True
            workflow.grant_update(tx.conn, grant_id, queued=True)
    elif r.kind == AccessKind.EPHEMERAL:
        username = ephemeral_username(r.name, grant_id)
        workflow.grant_update(tx.conn, grant_id, account=username)
        # the kind the target's plugin asks for a new account (an SSH key, a password)
        kind = node.targets.get(target.kind).secret_kind(None)
        secret = generate_secret(kind).map(str.encode)
        sealed.seal_column(tx.conn, tx.keyring, GRANT_LEASE_SECRET, grant_id, secret)
    tx.emit(
        AuditEvent(
            Action.GRANT_CREATED,
            actor=by,
            subject=f"grant:{grant_id}",
            source=source,
            details={
                "request_id": r.id,
                "user": r.requester,
                "target": target.name,
                "kind": r.kind.value,
                "name": r.name,
                "starts_at": starts.isoformat(),
                "expires_at": (starts + r.duration).isoformat(),
                "break_glass": r.break_glass,
                "account": workflow.grant_get(tx.conn, grant_id).account,
                "end_on_disconnect": r.end_on_disconnect,
                "queued": queued,
            },
        )
    )
    if checked_out:
        _audit_checkout(tx, account, grant_id, from_queue=False)
    if queued:
        holder = workflow.checkout_holder(tx.conn, account.id)
        tx.emit(
            AuditEvent(
                Action.GRANT_QUEUED,
                actor="system",
                subject=f"grant:{grant_id}",
                details={
                    "account": f"{target.name}/{r.name}",
                    "behind_grant": holder.id if holder else None,
                },
            )
        )
    elif starts <= at:
        activate(tx, r.id, grant_id, at)
    notify.notify(
        node,
        tx,
        "grant.created",
        {
            **summary(workflow.request_get(tx.conn, r.id)),
            "grant_id": grant_id,
            "expires_at": (starts + r.duration).isoformat(),
            # a queued grant starts when its account is checked in, with a new window
            "queued": queued,
        },
    )


def activate(tx: Tx, request_id: int, grant_id: int, at: datetime, provision: bool = True) -> None:
    """approved -> active. An elevation or ephemeral grant queues its provisioning (a job: the
    target is never called inside this transaction, which may be a sweep's whole batch)."""
    r = workflow.request_get(tx.conn, request_id)
    _set_state(tx, r, RequestState.ACTIVE, at, "system")
    tx.emit(
        AuditEvent(
            Action.GRANT_ACTIVATED,
            actor="system",
            subject=f"grant:{grant_id}",
            details={"request_id": request_id, "at": at.isoformat()},
        )
    )
    if provision and r.kind in (AccessKind.ROLE, AccessKind.EPHEMERAL):
        workflow.job_enqueue(tx.conn, "grant.provision", {"grant_id": grant_id}, run_after=at)


def _check_out_queued(tx: Tx, account: Account, grant_id: int, at: datetime) -> bool:
    """A queued grant takes the shared account at a check-in, whether it starts now or later.
    False if another grant holds it. The caller's transaction already holds the audit chain's
    head (the check-in's event came first), so the lock order stays audit head, then the
    checkout row, as at an approval (which takes it in :func:`_approve`, and audits it
    after its ``grant.created``)."""
    if not workflow.checkout_take(tx.conn, account.id, grant_id, at):
        return False
    _audit_checkout(tx, account, grant_id, from_queue=True)
    return True


def _audit_checkout(tx: Tx, account: Account, grant_id: int, from_queue: bool) -> None:
    """The one home of a checkout's audit event: every checkout is audited when it happens."""
    tx.emit(
        AuditEvent(
            Action.ACCOUNT_CHECKED_OUT,
            actor="system",
            subject=f"account:{account.target_name}/{account.username}",
            details={"grant_id": grant_id, "from_queue": from_queue},
        )
    )


def _refuse_if_checked_out(tx: Tx, account: Account) -> None:
    holder = workflow.checkout_holder(tx.conn, account.id)
    if holder is not None:
        until = holder.expires_at.strftime("%H:%M UTC")
        raise CheckedOut(
            f"{account.username} is checked out until {until} by grant {holder.id}",
            hint="try again after it is checked in, or ask for a policy with 'checkout: queue'",
        )


def check_in(tx: Tx, grant_id: int, at: datetime, promote: bool = True) -> None:
    """The grant gives its shared account back (after its rotation committed, or unused);
    the oldest grant queued for the account whose window has not ended takes it. Within its
    window it starts now, for its full duration; scheduled for later, it keeps its window and
    starts at its time (the sweep starts it). A queued grant never starts before its window,
    nor after it: the sweep lapses it (:func:`lapse_queued`).

    Lock order: the audit event is written first (it locks the audit chain's head), then the
    checkout row goes, as in an approval (audit head, then the checkout row), so a check-in
    and an approval of the same account never wait on each other in a circle. Queued requests
    another transaction holds (being cancelled) are skipped, not waited for.
    """
    grant = workflow.grant_get(tx.conn, grant_id)
    if not workflow.checkout_held_by(tx.conn, grant_id):
        return
    tx.emit(
        AuditEvent(
            Action.ACCOUNT_CHECKED_IN,
            actor="system",
            subject=f"account:{grant.target}/{grant.name}",
            details={"grant_id": grant_id},
        )
    )
    account_id = workflow.checkout_release(tx.conn, grant_id)
    if account_id is None or not promote:
        return
    target = repo.target_get(tx.conn, grant.target)
    account = repo.account_get(tx.conn, grant.target, grant.name)
    for request_id in workflow.next_queued(tx.conn, target.id, grant.name, at):
        if not workflow.request_try_lock(tx.conn, request_id):
            continue
        r = workflow.request_get(tx.conn, request_id)
        next_grant = workflow.grant_for_request(tx.conn, request_id)
        if next_grant is None or not next_grant.waiting:  # read again under the lock
            continue
        if not _check_out_queued(tx, account, next_grant.id, at):
            return  # someone else took it meanwhile
        if next_grant.starts_at > at:
            workflow.grant_update(tx.conn, next_grant.id, queued=False)
            return
        workflow.grant_update(
            tx.conn, next_grant.id, queued=False, starts_at=at, expires_at=at + r.duration
        )
        activate(tx, request_id, next_grant.id, at)
        return


def lapse_queued(node: Node, tx: Tx, r: AccessRequest, at: datetime) -> bool:
    """A grant still queued for its shared account when its approved window ended: the
    request expires and the grant ends unused. It never held the account, so nothing is
    cleaned up, rotated or checked in. True if it lapsed (``r`` locked by the caller)."""
    grant = workflow.grant_for_request(tx.conn, r.id)
    if grant is None or not grant.waiting or not grant.window_ended(at):
        return False
    account = repo.account_get(tx.conn, grant.target, grant.name)
    holder = workflow.checkout_holder(tx.conn, account.id)
    reason = (
        f"its window ended at {grant.expires_at.strftime('%Y-%m-%d %H:%M UTC')} while "
        f"{grant.target}/{grant.name} was checked out"
        + (f" by grant {holder.id}" if holder else "")
    )
    _set_state(tx, r, RequestState.EXPIRED, at, "system")
    workflow.grant_update(tx.conn, grant.id, queued=False, ended_at=at, end_reason=reason)
    tx.emit(
        AuditEvent(
            Action.GRANT_LAPSED,
            actor="system",
            subject=f"grant:{grant.id}",
            outcome=AuditOutcome.FAILURE,
            details={
                "request_id": r.id,
                "account": f"{grant.target}/{grant.name}",
                "window_ended_at": grant.expires_at.isoformat(),
                "behind_grant": holder.id if holder else None,
            },
        )
    )
    notify.notify(
        node,
        tx,
        "grant.lapsed",
        {**summary(workflow.request_get(tx.conn, r.id)), "grant_id": grant.id, "reason": reason},
    )
    return True


def lapse_if_due(node: Node, tx: Tx, r: AccessRequest, at: datetime) -> bool:
    """Expire a pending request whose time ran out; True if it did."""
    if r.state == RequestState.PENDING and r.expires_at <= at:
        _set_state(tx, r, RequestState.EXPIRED, at, "system", "no decision in time")
        tx.emit(
            AuditEvent(
                Action.REQUEST_EXPIRED,
                actor="system",
                subject=f"request:{r.id}",
                outcome=AuditOutcome.FAILURE,
                details={"expired_at": r.expires_at.isoformat()},
            )
        )
        notify.notify(node, tx, "request.decided", {**summary(r), "state": "expired"})
        return True
    return False


def _decide(
    node: Node,
    actor: Principal,
    request_id: int,
    decide: Callable[[Tx, AccessRequest, datetime], None],
) -> AccessRequest:
    """The one way a request is decided: under its row lock, by an eligible approver who is
    not the requester, and never after it lapsed (a lapsed request is expired, then refused)."""
    authorize(actor, Permission.REQUEST_DECIDE)
    at = node.clock()
    with node.write() as tx:
        r = workflow.request_lock(tx.conn, request_id)
        check_can_approve(actor, r)
        lapsed = lapse_if_due(node, tx, r, at)
        if not lapsed:
            decide(tx, r, at)
        result = workflow.request_get(tx.conn, request_id)
    if lapsed:
        # raised after the commit, so that the expiry itself is kept
        raise Conflict(f"request {request_id} expired before a decision", hint="file a new one")
    return result


def approve(
    node: Node, actor: Principal, request_id: int, comment: str = "", source: str = ""
) -> AccessRequest:
    """Count ``actor``'s approval; grant when the required number of distinct approvers agree."""

    def count_approval(tx: Tx, r: AccessRequest, at: datetime) -> None:
        transition(r.state, RequestState.APPROVED)  # only a pending request takes approvals
        if not workflow.approval_add(tx.conn, r.id, actor.user_id, actor.name, comment):
            return  # an approver counts once, however often they approve
        count = workflow.approval_count(tx.conn, r.id)
        tx.emit(
            AuditEvent(
                Action.REQUEST_APPROVED,
                actor=actor.name,
                subject=f"request:{r.id}",
                source=source,
                details={
                    "comment": comment,
                    "approvals": count,
                    "required": r.required_approvals,
                    "rule": r.rule,
                },
            )
        )
        if count >= r.required_approvals:
            _approve(node, tx, r, at, actor.name, comment, source)
            notify.notify(node, tx, "request.decided", summary(workflow.request_get(tx.conn, r.id)))

    return _decide(node, actor, request_id, count_approval)


def deny(
    node: Node, actor: Principal, request_id: int, reason: str, source: str = ""
) -> AccessRequest:
    if not reason.strip():
        raise ValidationError("a reason is required to deny", hint='use --reason "..."')

    def refuse(tx: Tx, r: AccessRequest, at: datetime) -> None:
        _set_state(tx, r, RequestState.DENIED, at, actor.name, reason)
        tx.emit(
            AuditEvent(
                Action.REQUEST_DENIED,
                actor=actor.name,
                subject=f"request:{r.id}",
                outcome=AuditOutcome.DENIED,
                source=source,
                details={"reason": reason, "rule": r.rule},
            )
        )
        notify.notify(node, tx, "request.decided", {**summary(r), "state": "denied"})

    return _decide(node, actor, request_id, refuse)


def cancel(node: Node, actor: Principal, request_id: int, source: str = "") -> AccessRequest:
    """The requester withdraws a request that has not started yet."""
    with node.write() as tx:
        r = workflow.request_lock(tx.conn, request_id)
        if r.requester_id != actor.user_id and not allowed(actor, Permission.GRANT_REVOKE):
            raise Forbidden("only the requester can cancel a request")
        _set_state(tx, r, RequestState.CANCELLED, node.clock(), actor.name, "cancelled")
        grant = workflow.grant_for_request(tx.conn, r.id)
        if grant is not None:
            workflow.grant_update(
                tx.conn, grant.id, ended_at=node.clock(), end_reason="cancelled before start"
            )
            check_in(tx, grant.id, node.clock())  # unused: nothing to rotate
        tx.emit(
            AuditEvent(
                Action.REQUEST_CANCELLED,
                actor=actor.name,
                subject=f"request:{r.id}",
                source=source,
                details={"previous_state": r.state.value},
            )
        )
        return workflow.request_get(tx.conn, request_id)


def withdraw_pending(
    tx: Tx, r: AccessRequest, at: datetime, by: str, reason: str, source: str
) -> None:
    """Cancel a pending request (locked by the caller) on someone else's behalf, e.g. when its
    requester is disabled."""
    _set_state(tx, r, RequestState.CANCELLED, at, by, reason)
    tx.emit(
        AuditEvent(
            Action.REQUEST_CANCELLED,
            actor=by,
            subject=f"request:{r.id}",
            source=source,
            details={"previous_state": r.state.value, "reason": reason},
        )
    )


def review(
    node: Node, actor: Principal, request_id: int, comment: str = "", source: str = ""
) -> AccessRequest:
    """Close the mandatory review of a break-glass grant (by someone other than its user)."""
    authorize(actor, Permission.REQUEST_REVIEW)
    with node.write() as tx:
        r = workflow.request_lock(tx.conn, request_id)
        if not r.review_required:
            raise Conflict(f"request {request_id} needs no review")
        if r.reviewed_by is not None:
            raise Conflict(f"request {request_id} was already reviewed by {r.reviewed_by}")
        if r.requester_id == actor.user_id:
            raise Forbidden("you cannot review your own break-glass access")
        workflow.request_update(tx.conn, r.id, reviewed_by=actor.name, reviewed_at=node.clock())
        tx.emit(
            AuditEvent(
                Action.REQUEST_REVIEWED,
                actor=actor.name,
                subject=f"request:{r.id}",
                source=source,
                details={"comment": comment},
            )
        )
        return workflow.request_get(tx.conn, request_id)


def get_request(node: Node, actor: Principal, request_id: int) -> AccessRequest:
    with node.read() as conn:
        r = workflow.request_get(conn, request_id)
    if r.requester_id != actor.user_id:
        authorize(actor, Permission.REQUEST_READ_ANY)
    return r


def list_requests(
    node: Node,
    actor: Principal,
    pending: bool = False,
    mine: bool = False,
    review: bool = False,
) -> list[AccessRequest]:
    """Your own requests, or (approvers, admins, auditors) everyone's. ``pending`` shows what
    waits for a decision; for an approver, only what they may decide."""
    see_all = allowed(actor, Permission.REQUEST_READ_ANY) and not mine
    states = [RequestState.PENDING] if pending else None
    with node.read() as conn:
        rows = workflow.request_list(conn, None if see_all else actor.user_id, states)
    if pending and see_all:
        rows = [r for r in rows if _decidable_by(actor, r)]
    if review:
        rows = [r for r in rows if r.review_required and r.reviewed_by is None]
    return rows


def grant_of(node: Node, r: AccessRequest) -> Grant | None:
    """The request's grant, if it was granted."""
    with node.read() as conn:
        return workflow.grant_for_request(conn, r.id)


def _decidable_by(actor: Principal, r: AccessRequest) -> bool:
    try:
        check_can_approve(actor, r)
    except Forbidden:
        return False
    return True


__all__ = [
    "CheckedOut",
    "NewRequest",
    "activate",
    "approve",
    "cancel",
    "check_in",
    "create_request",
    "deny",
    "get_request",
    "grant_of",
    "lapse_if_due",
    "lapse_queued",
    "list_requests",
    "review",
    "summary",
    "withdraw_pending",
]

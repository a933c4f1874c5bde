"""Crash-safe rotation of a shared account's credential (the RotationJournal).

1. journal: the core generates the new secret and stores it, encrypted, in the journal;
2. apply: the target plugin sets it on the target;
3. verify: a fresh login with it;
4. commit: current becomes previous, the new secret becomes current, the journal entry goes.

A crash between any two steps leaves the journal entry. Reconciliation (at start, and before
any rotation) tries the pending secret, then the current one, then the previous one, and keeps
whichever logs in; if none does, the account is marked ``needs_operator``, alerted, and refused
for checkout. No secret is ever lost: each is in the vault before the target hears of it.

Only one rotation of an account runs at a time, under a lock that dies with its process.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import StrEnum

from jitvault.audit import Action, AuditEvent, Outcome
from jitvault.crypto import generate_secret
from jitvault.domain import (
    Account,
    AccountMode,
    AccountStatus,
    Permission,
    Principal,
    Sensitive,
    authorize,
)
from jitvault.errors import Conflict, Unavailable, ValidationError
from jitvault.plugin_api import TargetAccess, TargetPlugin, TargetRejected
from jitvault.plugin_api.faults import FAULT_ENV, crash_point
from jitvault.services import notify
from jitvault.services.node import Node
from jitvault.services.targets import target_access
from jitvault.storage import journal, locks
from jitvault.storage import repositories as repo

log = logging.getLogger(__name__)

#: after this many rejections of one pending secret, a new one is generated
MAX_REJECTIONS = 3
STEPS = ("after_journal", "after_apply", "after_verify", "after_commit")


class Reconciled(StrEnum):
    CLEAN = "clean"  # no rotation was in flight
    COMMITTED = "committed"  # the pending secret works: rotation completed
    KEPT_CURRENT = "kept_current"  # the target still has the current secret
    RESTORED_PREVIOUS = "restored_previous"  # only the previous secret works: it is current again
    NEEDS_OPERATOR = "needs_operator"  # nothing logs in


@dataclass(frozen=True)
class RotationResult:
    account: str
    reconciled: Reconciled
    rotated: bool


def _b(secret: Sensitive[str]) -> Sensitive[bytes]:
    return secret.map(str.encode)


def _s(secret: Sensitive[bytes]) -> Sensitive[str]:
    return secret.map(bytes.decode)


class _Context:
    def __init__(self, node: Node, account: Account) -> None:
        self.node = node
        self.account = account
        with node.read() as conn:
            target = repo.target_get(conn, account.target_name)
        self.plugin: TargetPlugin = node.targets.get(target.kind)
        self.access: TargetAccess = target_access(node, target)
        self.label = f"{account.target_name}/{account.username}"

    def verify(self, secret: Sensitive[bytes] | None) -> bool:
        if secret is None:
            return False
        return asyncio.run(self.plugin.verify(self.access, self.account.username, _s(secret)))

    def current(self) -> Sensitive[str] | None:
        with self.node.read() as conn:
            current, _ = journal.account_secrets(conn, self.node.vault.keyring, self.account.id)
        return None if current is None else _s(current)

    def new_secret(self) -> Sensitive[bytes]:
        """A new secret of the kind the plugin says this account needs (password, SSH key)."""
        return _b(generate_secret(self.plugin.secret_kind(self.current())))

    def apply(self, secret: Sensitive[bytes]) -> None:
        user = self.account.username
        asyncio.run(self.plugin.rotate(self.access, user, _s(secret), current=self.current()))

    def audit(self, action: Action, actor: str, outcome: Outcome, **details: object) -> None:
        with self.node.write() as tx:
            tx.emit(
                AuditEvent(
                    action,
                    actor=actor,
                    subject=f"account:{self.label}",
                    outcome=outcome,
                    details=dict(details),
                )
            )


def _reconcile(ctx: _Context, actor: str) -> Reconciled:
    node, account = ctx.node, ctx.account
    keyring = node.vault.keyring
    with node.read() as conn:
        entry = journal.entry_for(conn, account.id)
        if entry is None:
            return Reconciled.CLEAN
        pending = journal.pending_secret(conn, keyring, entry)
        current, previous = journal.account_secrets(conn, keyring, account.id)
    if ctx.verify(pending):
        with node.write() as tx:
            journal.commit_secret(tx.conn, tx.keyring, account.id, pending)
            tx.emit(_event(Action.ROTATION_COMPLETED, actor, ctx.label, step="reconcile"))
        return Reconciled.COMMITTED
    if ctx.verify(current):
        with node.write() as tx:
            journal.remove(tx.conn, account.id)
            tx.emit(_event(Action.ROTATION_ROLLED_BACK, actor, ctx.label, kept="current"))
        return Reconciled.KEPT_CURRENT
    if previous is not None and ctx.verify(previous):
        with node.write() as tx:
            journal.commit_secret(tx.conn, tx.keyring, account.id, previous)
            tx.emit(_event(Action.ROTATION_ROLLED_BACK, actor, ctx.label, kept="previous"))
        return Reconciled.RESTORED_PREVIOUS
    mark_needs_operator(node, account, "no vaulted secret logs in (pending, current, previous)")
    return Reconciled.NEEDS_OPERATOR


def _event(action: Action, actor: str, label: str, **details: object) -> AuditEvent:
    return AuditEvent(action, actor=actor, subject=f"account:{label}", details=dict(details))


def mark_needs_operator(node: Node, account: Account, why: str) -> None:
    """Refuse checkout of the account until an operator fixes it; audit and alert."""
    with node.write() as tx:
        journal.set_status(tx.conn, account.id, AccountStatus.NEEDS_OPERATOR)
        tx.emit(
            AuditEvent(
                Action.ACCOUNT_NEEDS_OPERATOR,
                actor="system",
                subject=f"account:{account.target_name}/{account.username}",
                outcome=Outcome.FAILURE,
                details={"why": why},
            )
        )
        notify.notify(
            node,
            tx,
            "account.needs_operator",
            {"target": account.target_name, "account": account.username, "why": why},
        )
    log.error("account %s/%s needs an operator: %s", account.target_name, account.username, why)


def rotate(node: Node, account: Account, reason: str, actor: str = "system") -> RotationResult:
    """Reconcile any rotation in flight, then rotate to a new secret. Raises on failure
    (the caller retries); a secret is never lost whatever step fails or crashes."""
    if account.mode != AccountMode.INJECTED:
        raise ValidationError(f"{account.target_name}/{account.username} is not a shared account")
    ctx = _Context(node, account)
    with locks.try_lock(node.db, "account", account.id) as got:
        if not got:
            raise Conflict(
                f"a rotation of {ctx.label} is already running", hint="try again shortly"
            )
        with node.read() as conn:
            entry = journal.entry_for(conn, account.id)
        if entry is not None and entry.rejections > 0:
            # a retry after the target refused the pending secret: try the same one again
            _rotate_locked(ctx, reason, actor, entry)
            return RotationResult(ctx.label, Reconciled.CLEAN, rotated=True)
        reconciled = _reconcile(ctx, actor)
        if reconciled == Reconciled.NEEDS_OPERATOR:
            return RotationResult(ctx.label, reconciled, rotated=False)
        _rotate_locked(ctx, reason, actor)
        return RotationResult(ctx.label, reconciled, rotated=True)


def _rotate_locked(
    ctx: _Context, reason: str, actor: str, entry: journal.JournalEntry | None = None
) -> None:
    node, account = ctx.node, ctx.account
    # 1. journal
    if entry is None:
        with node.write() as tx:
            entry = journal.create(tx.conn, tx.keyring, account.id, ctx.new_secret(), reason)
            tx.emit(_event(Action.ROTATION_STARTED, actor, ctx.label, reason=reason))
        crash_point("after_journal")
    while True:
        with node.read() as conn:
            pending = journal.pending_secret(conn, node.vault.keyring, entry)
        # 2. apply
        ctx.apply(pending)
        with node.db.begin() as conn:
            journal.set_state(conn, entry.id, "applied")
        crash_point("after_apply")
        # 3. verify
        if ctx.verify(pending):
            break
        rejections = entry.rejections + 1
        with node.db.begin() as conn:
            journal.set_state(conn, entry.id, "journaled", rejections)
        ctx.audit(Action.ROTATION_REJECTED, actor, Outcome.FAILURE, rejections=rejections)
        if rejections < MAX_REJECTIONS:
            raise TargetRejected(
                f"the target did not accept the new secret of {ctx.label}", retryable=True
            )
        # the same pending secret failed three times: try a new one (journaled first)
        with node.write() as tx:
            journal.replace_pending(tx.conn, tx.keyring, entry, ctx.new_secret())
        with node.read() as conn:
            fresh = journal.entry_for(conn, account.id)
        assert fresh is not None
        entry = fresh
    crash_point("after_verify")
    # 4. commit
    with node.write() as tx:
        journal.commit_secret(tx.conn, tx.keyring, account.id, pending)
        tx.emit(_event(Action.ROTATION_COMPLETED, actor, ctx.label, reason=reason))
    crash_point("after_commit")


def reconcile_all(node: Node) -> dict[str, Reconciled]:
    """Finish or roll back every rotation left in flight (by a crash). Run at start."""
    with node.read() as conn:
        entries = journal.open_entries(conn)
        accounts = {a.id: a for a in repo.account_list(conn)}
    out: dict[str, Reconciled] = {}
    for entry in entries:
        account = accounts.get(entry.account_id)
        if account is None:
            continue
        ctx = _Context(node, account)
        with locks.try_lock(node.db, "account", account.id) as got:
            if not got:
                continue  # a live rotation holds it
            try:
                out[ctx.label] = _reconcile(ctx, "system")
            except (TargetRejected, Unavailable) as exc:
                log.warning("reconciling %s failed, will retry: %s", ctx.label, exc)
    return out


def rotate_now(node: Node, actor: Principal, ref: str, source: str = "") -> RotationResult:
    """``jitvault rotate TARGET/ACCOUNT``: rotate on demand."""
    authorize(actor, Permission.ACCOUNT_ROTATE)
    target, _, username = ref.partition("/")
    with node.read() as conn:
        account = repo.account_get(conn, target, username)
    if account.status == AccountStatus.NEEDS_OPERATOR:
        raise Conflict(
            f"{ref} needs an operator: set its current secret with 'jitvault account "
            "set-secret' first"
        )
    try:
        return rotate(node, account, reason=f"on demand by {actor.name}", actor=actor.name)
    except TargetRejected as exc:
        raise TargetRejected(
            f"rotation of {ref} failed: {exc.message}",
            hint="nothing was lost: the vault still holds a secret that logs in; run it again",
            retryable=exc.retryable,
        ) from None


def verify_now(node: Node, actor: Principal, ref: str) -> bool:
    """``jitvault account verify``: does the vaulted secret still log in?"""
    authorize(actor, Permission.ACCOUNT_ROTATE)
    target, _, username = ref.partition("/")
    with node.read() as conn:
        account = repo.account_get(conn, target, username)
        current, _ = journal.account_secrets(conn, node.vault.keyring, account.id)
    ok = _Context(node, account).verify(current)
    with node.write() as tx:
        tx.emit(
            AuditEvent(
                Action.ACCOUNT_VERIFIED,
                actor=actor.name,
                subject=f"account:{ref}",
                outcome=Outcome.SUCCESS if ok else Outcome.FAILURE,
            )
        )
    return ok


__all__ = [
    "FAULT_ENV",
    "MAX_REJECTIONS",
    "STEPS",
    "Reconciled",
    "RotationResult",
    "mark_needs_operator",
    "reconcile_all",
    "rotate",
    "rotate_now",
    "verify_now",
]

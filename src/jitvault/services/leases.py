"""The target side of elevation and ephemeral grants: provision at the start, take back at
the end, always from the lease's own data (never today's template or configuration).

When is the account made? When the grant starts, by a ``grant.provision`` job queued in the
transaction that activates the grant: the sweep's batch transaction never waits on a target, a
target that is down is retried with backoff, and the account exists before the user needs it.
A session that arrives before the job ran (the user connects the instant an auto-approved
grant starts) provisions it itself through :func:`ensure_provisioned`: the same function under
the same lock, and idempotent, so whichever comes first does it and the other finds it done.

Crash safety (journaled like a rotation): everything the end needs is in the lease before the
target is called: the ephemeral account's name, secret (encrypted) and template copy are
written when the grant is made; an elevation records whether the role was already held before
it grants it. A crash between any two steps leaves a lease the cleanup can act on: dropping an
account that was never made, or revoking a role never granted, is a no-op.

Provisioning and cleanup of one grant hold the grant's lock (it dies with its process), so a
revoke racing a provisioning cannot leave an account behind: the cleanup waits (retries) until
the provisioning is over, and a provisioning that finds its grant ended does nothing.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import nullcontext

from sqlalchemy import Connection

from jitvault.audit import Action, AuditEvent
from jitvault.domain import AccessKind, Grant, RequestState, Sensitive
from jitvault.errors import Conflict
from jitvault.plugin_api import AccountTemplate, TargetRejected
from jitvault.plugin_api.faults import crash_point
from jitvault.services import targets
from jitvault.services.node import Node
from jitvault.storage import locks, sealed, workflow
from jitvault.storage import repositories as repo
from jitvault.storage.tables import GRANT_LEASE_SECRET

#: crash-injection points (``JITVAULT_FAULT_CRASH_AT``): after the lease is complete and
#: before the target is called; after the target acted and before that is committed
STEPS = ("provision_after_lease", "provision_after_create")
#: how long a session waits for a provisioning another thread or node is doing
WAIT_SECONDS = 15.0


def template_of(grant: Grant) -> AccountTemplate:
    """The grant's own copy of its template, as the plugin contract takes it."""
    snap = grant.template or {"name": grant.name}
    return AccountTemplate(
        name=str(snap["name"]),
        grant_roles=tuple(snap.get("grant_roles") or ()),
        on_drop=str(snap.get("on_drop") or "drop_owned"),
        reassign_to=snap.get("reassign_to"),
    )


def lease_secret(node: Node, grant: Grant, conn: Connection | None = None) -> Sensitive[str] | None:
    """The ephemeral account's secret (decrypted just in time, in ``conn`` if given, else in
    a read transaction of its own; sealed: 503)."""
    with node.read() if conn is None else nullcontext(conn) as reading:
        raw = sealed.open_column(reading, node.vault.keyring, GRANT_LEASE_SECRET, grant.id)
    return None if raw is None else raw.map(bytes.decode)


def _busy(grant_id: int) -> TargetRejected:
    return TargetRejected(
        f"grant {grant_id} is being provisioned or cleaned up elsewhere", retryable=True
    )


def provision(node: Node, grant_id: int) -> bool:
    """Make the grant's account or grant its role on the target (idempotent); True if the
    grant is provisioned when this returns. Raises TargetRejected (retryable) if another
    thread or node holds the grant's lock."""
    with locks.try_lock(node.db, "grant", grant_id) as got:
        if not got:
            raise _busy(grant_id)
        with node.read() as conn:
            grant = workflow.grant_get(conn, grant_id)
            target = repo.target_get(conn, grant.target)
        if grant.provisioned_at is not None:
            return True
        if grant.state != RequestState.ACTIVE or grant.account is None:
            return False  # ended (its cleanup follows) or not started
        plugin = node.targets.get(target.kind)
        access = targets.target_access(node, target)
        if grant.kind == AccessKind.EPHEMERAL:
            secret = lease_secret(node, grant)
            if secret is None:
                raise Conflict(f"grant {grant.id} has no ephemeral secret in its lease")
            crash_point("provision_after_lease")
            asyncio.run(
                plugin.create_account(
                    access, template_of(grant), grant.account, secret, grant.expires_at
                )
            )
        elif grant.kind == AccessKind.ROLE:
            if grant.role_held_before is None:
                held = _held_before(
                    node, grant, asyncio.run(plugin.has_role(access, grant.account, grant.name))
                )
                with node.db.begin() as conn:
                    workflow.grant_update(conn, grant.id, role_held_before=held)
            crash_point("provision_after_lease")
            asyncio.run(plugin.elevate(access, grant.account, grant.name, grant.expires_at))
        else:
            return True
        crash_point("provision_after_create")
        with node.write() as tx:
            workflow.grant_update(tx.conn, grant.id, provisioned_at=node.clock())
            tx.emit(
                AuditEvent(
                    Action.GRANT_PROVISIONED,
                    actor="system",
                    subject=f"grant:{grant.id}",
                    details={
                        "kind": grant.kind.value,
                        "account": grant.account,
                        "name": grant.name,
                        "role_held_before": workflow.grant_get(tx.conn, grant.id).role_held_before,
                    },
                )
            )
        return True


def _held_before(node: Node, grant: Grant, member_now: bool) -> bool:
    """Whether the role was the account's before any grant: a membership another live grant of
    ours gave it does not count (that grant knows what was there before it)."""
    if not member_now:
        return False
    with node.read() as conn:
        others = workflow.live_elevations(conn, grant)
    for other in others:
        if other.role_held_before is not None:
            return other.role_held_before
    return True


def needs_provisioning(grant: Grant) -> bool:
    """Is this an elevation or ephemeral grant whose role or account is not made yet?"""
    return grant.kind in (AccessKind.ROLE, AccessKind.EPHEMERAL) and not grant.provisioned_at


def ensure_provisioned(node: Node, grant: Grant) -> Grant:
    """For a session: provision now if the start's job has not yet (waiting for whoever holds
    the grant's lock). Raises Conflict if the grant is not provisioned in time."""
    if not needs_provisioning(grant):
        return grant
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            if provision(node, grant.id):
                break
            raise Conflict(f"grant {grant.id} is not live")
        except TargetRejected as exc:
            if not exc.retryable or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with node.read() as conn:
        return workflow.grant_get(conn, grant.id)


def take_back(node: Node, grant: Grant) -> None:
    """The end of an elevation or ephemeral grant: revoke the role (unless the account held it
    before the grant, or another live grant of ours still gives it), or drop the account."""
    with locks.try_lock(node.db, "grant", grant.id) as got:
        if not got:
            raise _busy(grant.id)
        with node.read() as conn:
            grant = workflow.grant_get(conn, grant.id)  # what provisioning wrote meanwhile
            target = repo.target_get(conn, grant.target)
            still_given = grant.kind == AccessKind.ROLE and any(
                g.role_held_before is not None for g in workflow.live_elevations(conn, grant)
            )
        if grant.account is None:
            return  # never made (a lease from before templates existed has no account)
        plugin = node.targets.get(target.kind)
        access = targets.target_access(node, target)
        if grant.kind == AccessKind.EPHEMERAL:
            asyncio.run(plugin.drop_account(access, template_of(grant), grant.account))
        # a role is revoked only if the grant gave it: None means it was never asked about (so
        # never granted), True that the account held it before the grant
        elif grant.kind == AccessKind.ROLE and grant.role_held_before is False and not still_given:
            asyncio.run(plugin.revoke(access, grant.account, grant.name))


__all__ = [
    "STEPS",
    "ensure_provisioned",
    "lease_secret",
    "needs_provisioning",
    "provision",
    "take_back",
    "template_of",
]

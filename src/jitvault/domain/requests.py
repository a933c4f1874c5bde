"""Access requests, their state machine, approvals and grants.

::

    pending --approve(N)--> approved --start--> active --expire/end--> ended
       |  \\--deny--> denied     |  \\              \\--revoke--> revoked
       |   \\--cancel--> cancelled  \\--cancel/revoke--> cancelled / revoked
       \\--ttl--> expired

Every change goes through :func:`transition`; an illegal one is an error, never a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from jitvault.domain.identity import Principal, Role
from jitvault.domain.policy import AccessKind
from jitvault.errors import Conflict, Forbidden


class RequestState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    ACTIVE = "active"
    ENDED = "ended"
    REVOKED = "revoked"


TRANSITIONS: dict[RequestState, frozenset[RequestState]] = {
    RequestState.PENDING: frozenset(
        {RequestState.APPROVED, RequestState.DENIED, RequestState.CANCELLED, RequestState.EXPIRED}
    ),
    # approved -> expired: a grant queued for its shared account whose window ended first
    RequestState.APPROVED: frozenset(
        {RequestState.ACTIVE, RequestState.CANCELLED, RequestState.REVOKED, RequestState.EXPIRED}
    ),
    RequestState.ACTIVE: frozenset({RequestState.ENDED, RequestState.REVOKED}),
    RequestState.DENIED: frozenset(),
    RequestState.CANCELLED: frozenset(),
    RequestState.EXPIRED: frozenset(),
    RequestState.ENDED: frozenset(),
    RequestState.REVOKED: frozenset(),
}

#: states in which a grant exists and has not finished
LIVE_GRANT_STATES = frozenset({RequestState.APPROVED, RequestState.ACTIVE})


def transition(current: RequestState, new: RequestState) -> RequestState:
    """Check a state change; raise :class:`Conflict` naming both states if it is illegal."""
    if new not in TRANSITIONS[current]:
        raise Conflict(
            f"the request is {current.value}; it cannot become {new.value}",
            hint="see 'jitvault request show ID' for its state",
        )
    return new


@dataclass(frozen=True)
class AccessRequest:
    id: int
    requester_id: int
    requester: str
    target: str
    kind: AccessKind
    name: str
    duration: timedelta
    reason: str
    state: RequestState
    created_at: datetime
    expires_at: datetime  # when a pending request lapses
    start_at: datetime | None = None
    break_glass: bool = False
    rule: str | None = None
    explanation: str = ""
    required_approvals: int = 0
    approver_groups: tuple[str, ...] = ()
    max_connections: int | None = None
    approvals: tuple[str, ...] = ()
    decided_at: datetime | None = None
    review_required: bool = False
    reviewed_by: str | None = None
    #: elevation: the requester's own account on the target that gets the role
    account: str | None = None
    end_on_disconnect: bool = False
    #: what happens when the shared account is checked out: "refuse" or "queue" (the policy's)
    checkout: str = "refuse"


@dataclass(frozen=True)
class Grant:
    """A lease: the right to use ``kind``/``name`` on ``target`` from ``starts_at`` to
    ``expires_at``. It carries what its cleanup needs, whatever the configuration says later."""

    id: int
    request_id: int
    user_id: int
    user: str
    target: str
    kind: AccessKind
    name: str
    starts_at: datetime
    expires_at: datetime
    state: RequestState
    max_connections: int | None = None
    break_glass: bool = False
    ended_at: datetime | None = None
    end_reason: str | None = None
    #: the account sessions log in as on the target: the shared account, the requester's own
    #: (elevation), or the ephemeral one made for this grant (``jv_<template>_<grant id>``)
    account: str | None = None
    end_on_disconnect: bool = False
    #: waiting (approved) for its shared account to be checked in
    queued: bool = False
    #: when the account was made or the role granted on the target (None: not yet)
    provisioned_at: datetime | None = None
    #: elevation: the account held the role before the grant (so the end does not revoke it)
    role_held_before: bool | None = None
    #: ephemeral: the template as it was when the grant was made (what the drop uses)
    template: dict[str, Any] | None = None

    @property
    def login(self) -> str:
        """The account name sessions of this grant log in as upstream."""
        return self.account or self.name

    @property
    def waiting(self) -> bool:
        """Queued for its shared account, and neither started nor ended (a queued grant that
        is cancelled or revoked keeps its flag)."""
        return self.queued and self.state == RequestState.APPROVED

    def window_ended(self, at: datetime) -> bool:
        """Has the window it was approved for (or started with) ended at ``at``?"""
        return self.expires_at <= at


def check_can_approve(approver: Principal, request: AccessRequest) -> None:
    """Raise :class:`Forbidden` unless ``approver`` may approve or deny ``request``.

    The requester never decides their own request, whatever their role; identity is the user
    id (names are unique after NFKC case-folding, so there is no alias).
    """
    if approver.user_id == request.requester_id:
        raise Forbidden("you cannot approve or deny your own request")
    if approver.role not in (Role.APPROVER, Role.ADMIN):
        raise Forbidden(f"role {approver.role.value!r} cannot decide requests")
    if request.approver_groups and not set(approver.groups) & set(request.approver_groups):
        raise Forbidden(
            "you are not in an approver group of this request",
            hint=f"approvers: {', '.join(request.approver_groups)}",
        )


__all__ = [
    "LIVE_GRANT_STATES",
    "TRANSITIONS",
    "AccessRequest",
    "Grant",
    "RequestState",
    "check_can_approve",
    "transition",
]

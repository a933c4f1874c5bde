"""/v1/requests, /v1/grants and /v1/policies: the just-in-time workflow."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from jitvault.api.deps import CallerDep, NodeDep, SourceDep
from jitvault.api.schemas import (
    ConnectIn,
    DecisionIn,
    GrantOut,
    PolicyIn,
    PolicyTestIn,
    ReasonIn,
    RequestIn,
    RequestOut,
)
from jitvault.domain import AccessKind, AccessRequest, parse_duration
from jitvault.errors import ValidationError
from jitvault.services import grants, policies, requests, sessions
from jitvault.services.node import Node

router = APIRouter(prefix="/v1", tags=["workflow"])


def what_is_asked(
    account: str | None, role: str | None, ephemeral: str | None
) -> tuple[AccessKind, str, str | None]:
    """``(kind, name, own account)``: with a role, ``account`` is the requester's own account
    that gets it; otherwise exactly one of a shared account or a template is asked for."""
    if role:
        if ephemeral:
            raise ValidationError("ask for exactly one of account, role or ephemeral")
        return AccessKind.ROLE, role, account
    given = [
        (k, v) for k, v in ((AccessKind.ACCOUNT, account), (AccessKind.EPHEMERAL, ephemeral)) if v
    ]
    if len(given) != 1:
        raise ValidationError("ask for exactly one of account, role or ephemeral")
    return given[0][0], given[0][1], None


def _out(node: Node, r: AccessRequest) -> RequestOut:
    return RequestOut.of(r, requests.grant_of(node, r))


@router.post("/requests", response_model=RequestOut, status_code=status.HTTP_201_CREATED)
def create_request(
    body: RequestIn, caller: CallerDep, node: NodeDep, source: SourceDep
) -> RequestOut:
    kind, name, own = what_is_asked(body.account, body.role, body.ephemeral)
    new = requests.NewRequest(
        target=body.target,
        kind=kind,
        name=name,
        duration=parse_duration(body.duration),
        reason=body.reason,
        start_at=body.start_at,
        break_glass=body.break_glass,
        account=own,
        end_on_disconnect=body.end_on_disconnect,
    )
    return _out(node, requests.create_request(node, caller, new, source))


@router.get("/requests", response_model=list[RequestOut])
def list_requests(
    caller: CallerDep,
    node: NodeDep,
    pending: bool = False,
    mine: bool = False,
    review: bool = False,
) -> list[RequestOut]:
    return [_out(node, r) for r in requests.list_requests(node, caller, pending, mine, review)]


@router.get("/requests/{request_id}", response_model=RequestOut)
def get_request(request_id: int, caller: CallerDep, node: NodeDep) -> RequestOut:
    return _out(node, requests.get_request(node, caller, request_id))


@router.post("/requests/{request_id}/approve", response_model=RequestOut)
def approve(
    request_id: int, body: DecisionIn, caller: CallerDep, node: NodeDep, source: SourceDep
) -> RequestOut:
    return _out(node, requests.approve(node, caller, request_id, body.comment, source))


@router.post("/requests/{request_id}/deny", response_model=RequestOut)
def deny(
    request_id: int, body: ReasonIn, caller: CallerDep, node: NodeDep, source: SourceDep
) -> RequestOut:
    return _out(node, requests.deny(node, caller, request_id, body.reason, source))


@router.post("/requests/{request_id}/cancel", response_model=RequestOut)
def cancel(request_id: int, caller: CallerDep, node: NodeDep, source: SourceDep) -> RequestOut:
    return _out(node, requests.cancel(node, caller, request_id, source))


@router.post("/requests/{request_id}/review", response_model=RequestOut)
def review(
    request_id: int, body: DecisionIn, caller: CallerDep, node: NodeDep, source: SourceDep
) -> RequestOut:
    return _out(node, requests.review(node, caller, request_id, body.comment, source))


@router.post("/requests/{request_id}/connect")
def connect(
    request_id: int, body: ConnectIn, caller: CallerDep, node: NodeDep, source: SourceDep
) -> dict[str, Any]:
    """A session token for your own live grant, with where to connect (shown once)."""
    return sessions.connect_info(node, caller, request_id, body.once, source)


@router.get("/grants", response_model=list[GrantOut])
def list_grants(
    caller: CallerDep,
    node: NodeDep,
    all: bool = False,
    mine: bool = False,
) -> list[GrantOut]:
    now = node.clock()
    return [GrantOut.of(g, now) for g in grants.list_grants(node, caller, not all, mine)]


@router.get("/grants/{grant_id}", response_model=GrantOut)
def get_grant(grant_id: int, caller: CallerDep, node: NodeDep) -> GrantOut:
    return GrantOut.of(grants.get_grant(node, caller, grant_id), node.clock())


@router.post("/grants/{grant_id}/revoke", response_model=GrantOut)
def revoke_grant(
    grant_id: int, body: ReasonIn, caller: CallerDep, node: NodeDep, source: SourceDep
) -> GrantOut:
    g = grants.revoke_grant(node, caller, grant_id, body.reason, source)
    return GrantOut.of(g, node.clock())


@router.put("/policies")
def apply_policy(
    body: PolicyIn, caller: CallerDep, node: NodeDep, source: SourceDep
) -> dict[str, Any]:
    return policies.apply_policy(node, caller, body.document, source)


@router.get("/policies")
def show_policy(caller: CallerDep, node: NodeDep) -> dict[str, Any]:
    return policies.show_policy(node, caller)


@router.post("/policies/test")
def test_policy(body: PolicyTestIn, caller: CallerDep, node: NodeDep) -> dict[str, Any]:
    kind, name, _ = what_is_asked(body.account, body.role, body.ephemeral)
    decision = policies.check_policy(
        node,
        caller,
        body.document,
        body.as_user,
        body.target,
        kind,
        name,
        parse_duration(body.duration),
        body.reason,
        body.at,
        body.break_glass,
    )
    return decision.as_dict()

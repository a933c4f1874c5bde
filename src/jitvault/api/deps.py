"""Request dependencies: the node, the caller's source address and principal.

Every route under ``/v1`` except the few marked public requires an authenticated caller; what
the caller may do is decided in the services (``domain.permissions``), so denial is the default.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from jitvault.domain import Principal, Sensitive
from jitvault.services import Node
from jitvault.services.auth import authenticate_token


def get_node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


MAX_SOURCE = 64  # an IPv6 address is at most 45 characters


def source_address(request: Request) -> str:
    node = get_node(request)
    peer = request.client.host if request.client else "unknown"
    if peer in node.settings.auth.trusted_proxies:
        forwarded = request.headers.get("x-forwarded-for", "")
        if forwarded:
            return (forwarded.split(",")[-1].strip() or peer)[:MAX_SOURCE]
    return peer[:MAX_SOURCE]


def _bearer(request: Request) -> Sensitive[str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return Sensitive(value.strip())
    token = request.headers.get("x-jitvault-token")
    return Sensitive(token) if token else None


def current_principal(request: Request) -> Principal:
    node = get_node(request)
    node.vault.keyring  # noqa: B018  sealed: 503 before anything else
    principal = authenticate_token(node, _bearer(request), source_address(request))
    request.state.principal = principal
    return principal


NodeDep = Annotated[Node, Depends(get_node)]
SourceDep = Annotated[str, Depends(source_address)]
CallerDep = Annotated[Principal, Depends(current_principal)]

__all__ = ["CallerDep", "NodeDep", "SourceDep", "current_principal", "get_node", "source_address"]

"""/v1/auth: password login (public) and whoami."""

from __future__ import annotations

from fastapi import APIRouter

from jitvault.api.deps import CallerDep, NodeDep, SourceDep
from jitvault.api.schemas import LoginIn, TokenOut, WhoAmI
from jitvault.domain import Sensitive
from jitvault.services import auth

public = APIRouter(prefix="/v1/auth", tags=["auth"])
router = APIRouter(prefix="/v1/auth", tags=["auth"])


@public.post("/login", response_model=TokenOut)
def login(body: LoginIn, node: NodeDep, source: SourceDep) -> TokenOut:
    node.vault.keyring  # noqa: B018  sealed: 503
    principal, token = auth.login(
        node, body.username, Sensitive(body.password.get_secret_value()), source
    )
    return TokenOut(token=token.reveal(), user=principal.name)


@router.get("/whoami", response_model=WhoAmI)
def whoami(caller: CallerDep) -> WhoAmI:
    return WhoAmI(
        name=caller.name, role=caller.role, groups=list(caller.groups), token_id=caller.token_id
    )

"""/v1/users, their SSH keys, and /v1/tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from jitvault.api.deps import CallerDep, NodeDep, SourceDep
from jitvault.api.schemas import SshKeyIn, SshKeyOut, TokenIn, TokenOut, UserIn, UserOut
from jitvault.domain import Sensitive, parse_duration
from jitvault.services import ssh_keys, users

router = APIRouter(prefix="/v1", tags=["users"])


@router.post("/users", response_model=UserOut, status_code=status.HTTP_201_CREATED)
def add_user(body: UserIn, caller: CallerDep, node: NodeDep, source: SourceDep) -> UserOut:
    password = Sensitive(body.password.get_secret_value()) if body.password else None
    user = users.add_user(node, caller, body.name, body.role, body.groups, password, source)
    return UserOut.of(user)


@router.get("/users", response_model=list[UserOut])
def list_users(caller: CallerDep, node: NodeDep) -> list[UserOut]:
    return [UserOut.of(u) for u in users.list_users(node, caller)]


@router.get("/users/{name}", response_model=UserOut)
def get_user(name: str, caller: CallerDep, node: NodeDep) -> UserOut:
    return UserOut.of(users.get_user(node, caller, name))


@router.post("/users/{name}/disable")
def disable_user(name: str, caller: CallerDep, node: NodeDep, source: SourceDep) -> dict[str, Any]:
    """Disable a user: no more logins; their live grants are revoked, pending requests cancelled."""
    user, revoked, cancelled = users.set_disabled(node, caller, name, True, source)
    return {
        **UserOut.of(user).model_dump(mode="json"),
        "grants_revoked": revoked,
        "requests_cancelled": cancelled,
    }


@router.post("/users/{name}/enable", response_model=UserOut)
def enable_user(name: str, caller: CallerDep, node: NodeDep, source: SourceDep) -> UserOut:
    """Let a disabled user log in again (revoked grants stay revoked)."""
    return UserOut.of(users.set_disabled(node, caller, name, False, source)[0])


@router.post("/users/{name}/tokens", response_model=TokenOut, status_code=201)
def create_token(
    name: str, body: TokenIn, caller: CallerDep, node: NodeDep, source: SourceDep
) -> TokenOut:
    ttl = parse_duration(body.ttl) if body.ttl else None
    token = users.create_token(node, caller, name, body.description, ttl, source)
    return TokenOut(token=token.reveal(), user=name)


@router.get("/users/{name}/tokens")
def list_tokens(name: str, caller: CallerDep, node: NodeDep) -> list[dict[str, Any]]:
    return users.list_tokens(node, caller, name)


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(token_id: str, caller: CallerDep, node: NodeDep, source: SourceDep) -> None:
    users.revoke_token(node, caller, token_id, source)


@router.post("/users/{name}/ssh-keys", response_model=SshKeyOut, status_code=201)
def register_ssh_key(
    name: str, body: SshKeyIn, caller: CallerDep, node: NodeDep, source: SourceDep
) -> SshKeyOut:
    text = Sensitive(body.public_key.get_secret_value())
    return SshKeyOut.of(ssh_keys.register_key(node, caller, name, text, body.comment, source))


@router.get("/users/{name}/ssh-keys", response_model=list[SshKeyOut])
def list_ssh_keys(name: str, caller: CallerDep, node: NodeDep) -> list[SshKeyOut]:
    return [SshKeyOut.of(k) for k in ssh_keys.list_keys(node, caller, name)]


# a fingerprint is base64: it may hold "/" (sent as %2F), hence the path converter
@router.delete("/users/{name}/ssh-keys/{fingerprint:path}", status_code=204)
def remove_ssh_key(
    name: str, fingerprint: str, caller: CallerDep, node: NodeDep, source: SourceDep
) -> None:
    ssh_keys.remove_key(node, caller, name, fingerprint, source)

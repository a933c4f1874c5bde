"""Users and their API tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from jitvault.audit import Action, AuditEvent
from jitvault.crypto import hash_password, issue_token
from jitvault.domain import (
    Permission,
    Principal,
    Role,
    Sensitive,
    User,
    authorize,
    validate_group,
    validate_username,
)
from jitvault.errors import Forbidden, ValidationError
from jitvault.services import grants
from jitvault.services.node import Node
from jitvault.storage import repositories as repo

MIN_PASSWORD_LENGTH = 12


def add_user(
    node: Node,
    actor: Principal,
    name: str,
    role: Role,
    groups: list[str] | None = None,
    password: Sensitive[str] | None = None,
    source: str = "",
) -> User:
    authorize(actor, Permission.USER_CREATE)
    return _create_user(node, actor.name, name, role, groups or [], password, source)


def _create_user(
    node: Node,
    actor: str,
    name: str,
    role: Role,
    groups: list[str],
    password: Sensitive[str] | None,
    source: str,
) -> User:
    norm = validate_username(name)
    clean_groups = [validate_group(g) for g in groups]
    pw_hash = None
    if password is not None:
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ValidationError(
                "password too short", hint=f"use at least {MIN_PASSWORD_LENGTH} characters"
            )
        pw_hash = hash_password(password)
    with node.write() as tx:
        user = repo.user_add(tx.conn, norm, role, clean_groups, pw_hash)
        tx.emit(
            AuditEvent(
                Action.USER_CREATED,
                actor=actor,
                subject=f"user:{user.name}",
                source=source,
                details={
                    "role": role.value,
                    "groups": list(user.groups),
                    "password_set": pw_hash is not None,
                },
            )
        )
    return user


def bootstrap_admin(
    node: Node, name: str, description: str = "bootstrap"
) -> tuple[User, Sensitive[str]]:
    """The first admin and its token, made by a local operator command (no API caller yet)."""
    user = _create_user(node, "system", name, Role.ADMIN, [], None, "local")
    token = issue_api_token(node, user, description=description, actor="system", source="local")
    return user, token


def list_users(node: Node, actor: Principal) -> list[User]:
    authorize(actor, Permission.USER_READ)
    with node.read() as conn:
        return repo.user_list(conn)


def get_user(node: Node, actor: Principal, name: str) -> User:
    authorize(actor, Permission.USER_READ)
    with node.read() as conn:
        return repo.user_get(conn, validate_username(name))


def issue_api_token(
    node: Node,
    user: User,
    *,
    description: str = "",
    ttl: timedelta | None = None,
    actor: str,
    source: str = "",
    action: Action = Action.TOKEN_CREATED,
) -> Sensitive[str]:
    issued = issue_token()
    expires = datetime.now(UTC) + ttl if ttl else None
    with node.write() as tx:
        repo.token_add(tx.conn, issued.token_id, user.id, issued.secret_hash, description, expires)
        tx.emit(
            AuditEvent(
                action,
                actor=actor,
                subject=f"user:{user.name}",
                source=source,
                details={
                    "token_id": issued.token_id,
                    "description": description,
                    "expires_at": expires.isoformat() if expires else None,
                },
            )
        )
    return issued.token


def create_token(
    node: Node,
    actor: Principal,
    name: str,
    description: str = "",
    ttl: timedelta | None = None,
    source: str = "",
) -> Sensitive[str]:
    """A new API token for ``name``; admins may make one for anyone, others only for themselves."""
    norm = validate_username(name)
    if norm != actor.name:
        authorize(actor, Permission.TOKEN_CREATE_ANY)
    with node.read() as conn:
        user = repo.user_get(conn, norm)
    return issue_api_token(
        node, user, description=description, ttl=ttl, actor=actor.name, source=source
    )


def list_tokens(node: Node, actor: Principal, name: str) -> list[dict[str, Any]]:
    norm = validate_username(name)
    if norm != actor.name:
        authorize(actor, Permission.TOKEN_READ_ANY)
    with node.read() as conn:
        return repo.token_list(conn, repo.user_get(conn, norm).id)


def revoke_token(node: Node, actor: Principal, token_id: str, source: str = "") -> None:
    with node.write() as tx:
        owner = repo.user_by_id(tx.conn, repo.token_owner(tx.conn, token_id))
        if owner is None or (owner.name != actor.name and actor.role != Role.ADMIN):
            raise Forbidden("you may revoke only your own tokens")
        repo.token_revoke(tx.conn, token_id)
        tx.emit(
            AuditEvent(
                Action.TOKEN_REVOKED,
                actor=actor.name,
                subject=f"user:{owner.name}",
                source=source,
                details={"token_id": token_id},
            )
        )


def set_disabled(
    node: Node, actor: Principal, name: str, disabled: bool, source: str = ""
) -> tuple[User, list[int], list[int]]:
    """Disable a user or enable them again. Disabling, in one transaction: the user can no
    longer log in (API tokens, password, SSH keys), every live grant of theirs is revoked
    (sessions cut on every node, cleanups queued) and every pending request cancelled.
    Enabling gives nothing back. Returns (the user, revoked grant ids, cancelled request ids)."""
    authorize(actor, Permission.USER_CREATE)
    norm = validate_username(name)
    if disabled and norm == actor.name:
        raise Forbidden("you cannot disable yourself", hint="ask another admin")
    with node.write() as tx:
        user = repo.user_get(tx.conn, norm)
        repo.user_update(tx.conn, user.id, disabled=disabled)
        revoked: list[int] = []
        cancelled: list[int] = []
        if disabled:
            revoked, cancelled = grants.withdraw_user_access(
                node, tx, user.id, actor.name, f"user {norm} disabled", source
            )
        tx.emit(
            AuditEvent(
                Action.USER_DISABLED if disabled else Action.USER_ENABLED,
                actor=actor.name,
                subject=f"user:{norm}",
                source=source,
                details=(
                    {"grants_revoked": revoked, "requests_cancelled": cancelled} if disabled else {}
                ),
            )
        )
        return repo.user_get(tx.conn, norm), revoked, cancelled


__all__ = [
    "add_user",
    "bootstrap_admin",
    "create_token",
    "get_user",
    "issue_api_token",
    "list_tokens",
    "list_users",
    "revoke_token",
    "set_disabled",
]

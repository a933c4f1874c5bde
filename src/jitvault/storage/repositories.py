"""Repositories: SQL in, domain objects out. Every function takes the caller's transaction."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, overload

from sqlalchemy import Connection, Row, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from jitvault.domain import (
    Account,
    AccountMode,
    AccountStatus,
    Principal,
    Role,
    Target,
    User,
)
from jitvault.errors import Conflict, NotFound
from jitvault.storage import tables as t


def now() -> datetime:
    return datetime.now(UTC)


@overload
def aware(value: datetime) -> datetime: ...


@overload
def aware(value: datetime | None) -> datetime | None: ...


def aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


# --- meta ---------------------------------------------------------------------------------------


def meta_get(conn: Connection, key: str) -> str | None:
    value: str | None = conn.execute(
        select(t.meta.c.value).where(t.meta.c.key == key)
    ).scalar_one_or_none()
    return value


def meta_set(conn: Connection, key: str, value: str) -> None:
    if conn.execute(update(t.meta).where(t.meta.c.key == key).values(value=value)).rowcount == 0:
        conn.execute(insert(t.meta).values(key=key, value=value))


# --- keyring ------------------------------------------------------------------------------------


def keyring_rows(conn: Connection) -> list[Row[Any]]:
    return list(
        conn.execute(
            select(t.keyring).where(t.keyring.c.state != "retired").order_by(t.keyring.c.term)
        ).all()
    )


def keyring_all(conn: Connection) -> list[Row[Any]]:
    return list(conn.execute(select(t.keyring).order_by(t.keyring.c.purpose, t.keyring.c.term)))


def keyring_add(
    conn: Connection, purpose: str, term: int, provider: str, wrapped: bytes, state: str
) -> None:
    conn.execute(
        insert(t.keyring).values(
            purpose=purpose,
            term=term,
            provider=provider,
            wrapped=wrapped,
            state=state,
            created_at=now(),
        )
    )


def keyring_demote_active(conn: Connection, purpose: str) -> int | None:
    """Turn the active term of ``purpose`` into decrypt-only; return it (locked)."""
    term = conn.execute(
        select(t.keyring.c.term)
        .where(t.keyring.c.purpose == purpose, t.keyring.c.state == "active")
        .with_for_update()
    ).scalar_one_or_none()
    if term is not None:
        conn.execute(
            update(t.keyring)
            .where(t.keyring.c.purpose == purpose, t.keyring.c.term == term)
            .values(state="decrypt_only")
        )
    return None if term is None else int(term)


# --- users --------------------------------------------------------------------------------------


def _user(row: Row[Any]) -> User:
    return User(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        groups=tuple(json.loads(row.groups)),
        disabled=bool(row.disabled),
        created_at=aware(row.created_at),
    )


def user_add(
    conn: Connection, name: str, role: Role, groups: list[str], password_hash: str | None
) -> User:
    try:
        conn.execute(
            insert(t.users).values(
                name=name,
                role=role.value,
                groups=json.dumps(sorted(set(groups))),
                password_hash=password_hash,
                disabled=False,
                created_at=now(),
            )
        )
    except IntegrityError:
        raise Conflict(f"user {name!r} already exists") from None
    return user_get(conn, name)


#: lookups by name that every login and API call makes (hot path: see jitvault.storage)
_USER_BY_NAME = select(t.users).where(t.users.c.name == bindparam("name"))
_TARGET_BY_NAME = select(t.targets).where(t.targets.c.name == bindparam("name"))


def user_get(conn: Connection, name: str) -> User:
    row = conn.execute(_USER_BY_NAME, {"name": name}).first()
    if row is None:
        raise NotFound(f"user {name!r} does not exist", hint="see 'jitvault user list'")
    return _user(row)


def user_find(conn: Connection, name: str) -> tuple[User, str | None] | None:
    """The user and their password hash, or None."""
    row = conn.execute(_USER_BY_NAME, {"name": name}).first()
    return None if row is None else (_user(row), row.password_hash)


def user_by_id(conn: Connection, user_id: int) -> User | None:
    row = conn.execute(select(t.users).where(t.users.c.id == user_id)).first()
    return None if row is None else _user(row)


def user_list(conn: Connection) -> list[User]:
    return [_user(r) for r in conn.execute(select(t.users).order_by(t.users.c.name))]


def user_update(conn: Connection, user_id: int, **values: Any) -> None:
    if "groups" in values:
        values["groups"] = json.dumps(sorted(set(values["groups"])))
    conn.execute(update(t.users).where(t.users.c.id == user_id).values(**values))


def user_count(conn: Connection) -> int:
    return len(conn.execute(select(t.users.c.id)).all())


# --- API tokens ---------------------------------------------------------------------------------


def token_add(
    conn: Connection,
    token_id: str,
    user_id: int,
    secret_hash: str,
    description: str,
    expires_at: datetime | None,
) -> None:
    conn.execute(
        insert(t.api_tokens).values(
            id=token_id,
            user_id=user_id,
            secret_hash=secret_hash,
            description=description,
            created_at=now(),
            expires_at=expires_at,
        )
    )


def token_lookup(conn: Connection, token_id: str) -> tuple[str, Principal, datetime | None] | None:
    """``(secret_hash, principal, expires_at)`` of a live token of an enabled user, else None."""
    row = conn.execute(
        select(
            t.api_tokens.c.secret_hash,
            t.api_tokens.c.expires_at,
            t.users.c.id,
            t.users.c.name,
            t.users.c.role,
            t.users.c.groups,
        )
        .join(t.users, t.users.c.id == t.api_tokens.c.user_id)
        .where(
            t.api_tokens.c.id == token_id,
            t.api_tokens.c.revoked_at.is_(None),
            t.users.c.disabled.is_(False),
        )
    ).first()
    if row is None:
        return None
    principal = Principal(
        user_id=row.id,
        name=row.name,
        role=Role(row.role),
        groups=tuple(json.loads(row.groups)),
        token_id=token_id,
    )
    return row.secret_hash, principal, aware(row.expires_at)


def token_list(conn: Connection, user_id: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(
            t.api_tokens.c.id,
            t.api_tokens.c.description,
            t.api_tokens.c.created_at,
            t.api_tokens.c.expires_at,
            t.api_tokens.c.revoked_at,
        )
        .where(t.api_tokens.c.user_id == user_id)
        .order_by(t.api_tokens.c.created_at)
    )
    return [
        {
            "id": r.id,
            "description": r.description,
            "created_at": aware(r.created_at),
            "expires_at": aware(r.expires_at),
            "revoked": r.revoked_at is not None,
        }
        for r in rows
    ]


def token_owner(conn: Connection, token_id: str) -> int:
    user_id = conn.execute(
        select(t.api_tokens.c.user_id).where(t.api_tokens.c.id == token_id)
    ).scalar_one_or_none()
    if user_id is None:
        raise NotFound(f"token {token_id} does not exist")
    return int(user_id)


def token_ids_described(conn: Connection, user_id: int, description: str) -> list[str]:
    """Live token ids of a user with this description (e.g. the ones ``jitvault dev`` made)."""
    rows = conn.execute(
        select(t.api_tokens.c.id).where(
            t.api_tokens.c.user_id == user_id,
            t.api_tokens.c.description == description,
            t.api_tokens.c.revoked_at.is_(None),
        )
    )
    return [str(r) for r in rows.scalars()]


def token_revoke(conn: Connection, token_id: str) -> None:
    token_owner(conn, token_id)
    conn.execute(
        update(t.api_tokens)
        .where(t.api_tokens.c.id == token_id, t.api_tokens.c.revoked_at.is_(None))
        .values(revoked_at=now())
    )


# --- targets and accounts -----------------------------------------------------------------------


def _target(row: Row[Any]) -> Target:
    return Target(
        id=row.id,
        name=row.name,
        kind=row.kind,
        options=json.loads(row.options),
        admin_user=row.admin_user,
        has_admin_secret=row.admin_secret is not None,
        created_at=aware(row.created_at),
        labels=json.loads(row.labels or "{}"),
    )


def target_add(
    conn: Connection,
    name: str,
    kind: str,
    options: dict[str, Any],
    admin_user: str | None,
    labels: dict[str, str] | None = None,
) -> Target:
    try:
        conn.execute(
            insert(t.targets).values(
                name=name,
                kind=kind,
                options=json.dumps(options, sort_keys=True),
                admin_user=admin_user,
                created_at=now(),
                labels=json.dumps(labels or {}, sort_keys=True),
            )
        )
    except IntegrityError:
        raise Conflict(f"target {name!r} already exists") from None
    return target_get(conn, name)


def target_update(
    conn: Connection,
    name: str,
    options: dict[str, Any],
    admin_user: str | None,
    labels: dict[str, str],
) -> Target:
    conn.execute(
        update(t.targets)
        .where(t.targets.c.name == name)
        .values(
            options=json.dumps(options, sort_keys=True),
            admin_user=admin_user,
            labels=json.dumps(labels, sort_keys=True),
        )
    )
    return target_get(conn, name)


def target_get(conn: Connection, name: str) -> Target:
    row = conn.execute(_TARGET_BY_NAME, {"name": name}).first()
    if row is None:
        raise NotFound(f"target {name!r} does not exist", hint="see 'jitvault target list'")
    return _target(row)


def target_list(conn: Connection) -> list[Target]:
    return [_target(r) for r in conn.execute(select(t.targets).order_by(t.targets.c.name))]


_ACCOUNT_COLUMNS = (
    t.accounts.c.id,
    t.accounts.c.target_id,
    t.targets.c.name.label("target_name"),
    t.accounts.c.username,
    t.accounts.c.mode,
    t.accounts.c.status,
    (t.accounts.c.secret.is_not(None)).label("has_secret"),
    t.accounts.c.secret_updated_at,
    t.accounts.c.created_at,
)
_ACCOUNT_BY_NAME: Any = (
    select(*_ACCOUNT_COLUMNS)
    .join(t.targets, t.targets.c.id == t.accounts.c.target_id)
    .where(t.targets.c.name == bindparam("target"), t.accounts.c.username == bindparam("username"))
)


def _account(row: Row[Any]) -> Account:
    return Account(
        id=row.id,
        target_id=row.target_id,
        target_name=row.target_name,
        username=row.username,
        mode=AccountMode(row.mode),
        status=AccountStatus(row.status),
        has_secret=bool(row.has_secret),
        secret_updated_at=aware(row.secret_updated_at),
        created_at=aware(row.created_at),
    )


def account_add(conn: Connection, target: Target, username: str, mode: AccountMode) -> Account:
    try:
        conn.execute(
            insert(t.accounts).values(
                target_id=target.id,
                username=username,
                mode=mode.value,
                status=AccountStatus.OK.value,
                created_at=now(),
            )
        )
    except IntegrityError:
        raise Conflict(f"account {username!r} already exists on target {target.name!r}") from None
    return account_get(conn, target.name, username)


def account_get(conn: Connection, target_name: str, username: str) -> Account:
    row = conn.execute(_ACCOUNT_BY_NAME, {"target": target_name, "username": username}).first()
    if row is None:
        raise NotFound(
            f"account {target_name}/{username} does not exist",
            hint="see 'jitvault account list'",
        )
    return _account(row)


def account_list(conn: Connection, target_name: str | None = None) -> list[Account]:
    q = select(*_ACCOUNT_COLUMNS).join(t.targets, t.targets.c.id == t.accounts.c.target_id)
    if target_name is not None:
        q = q.where(t.targets.c.name == target_name)
    return [_account(r) for r in conn.execute(q.order_by(t.targets.c.name, t.accounts.c.username))]


def account_touch_secret(conn: Connection, account_id: int) -> None:
    conn.execute(
        update(t.accounts).where(t.accounts.c.id == account_id).values(secret_updated_at=now())
    )


# --- authentication failures (lockout) -----------------------------------------------------------


def auth_failure_state(conn: Connection, key: str) -> tuple[int, datetime, datetime | None] | None:
    row = conn.execute(select(t.auth_failures).where(t.auth_failures.c.key == key)).first()
    if row is None:
        return None
    first_at = aware(row.first_at)
    assert first_at is not None
    return int(row._mapping["count"]), first_at, aware(row.locked_until)


def auth_failure_put(
    conn: Connection, key: str, count: int, first_at: datetime, locked_until: datetime | None
) -> None:
    values = {"count": count, "first_at": first_at, "locked_until": locked_until}
    if (
        conn.execute(
            update(t.auth_failures).where(t.auth_failures.c.key == key).values(**values)
        ).rowcount
        == 0
    ):
        conn.execute(insert(t.auth_failures).values(key=key, **values))


def auth_failure_clear(conn: Connection, key: str) -> None:
    conn.execute(delete(t.auth_failures).where(t.auth_failures.c.key == key))


__all__ = [
    "account_add",
    "account_get",
    "account_list",
    "account_touch_secret",
    "auth_failure_clear",
    "auth_failure_put",
    "auth_failure_state",
    "aware",
    "keyring_add",
    "keyring_all",
    "keyring_demote_active",
    "keyring_rows",
    "meta_get",
    "meta_set",
    "now",
    "target_add",
    "target_get",
    "target_list",
    "token_add",
    "token_ids_described",
    "token_list",
    "token_lookup",
    "token_owner",
    "token_revoke",
    "user_add",
    "user_by_id",
    "user_count",
    "user_find",
    "user_get",
    "user_list",
    "user_update",
]

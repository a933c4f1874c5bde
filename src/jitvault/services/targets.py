"""Targets and the privileged accounts whose credentials the vault keeps.

Credentials go in and never come out through this module's public functions: callers get
metadata only. :func:`account_secret` is for the session proxies and lifecycle jobs, which use
the value upstream and never return it.
"""

from __future__ import annotations

import asyncio
from contextlib import nullcontext
from typing import Any

from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import Connection

from jitvault.audit import Action, AuditEvent
from jitvault.crypto import is_usable_private_key, looks_like_private_key
from jitvault.domain import (
    Account,
    AccountMode,
    Permission,
    Principal,
    Sensitive,
    Target,
    authorize,
    validate_account_name,
    validate_target_name,
)
from jitvault.errors import Conflict, ValidationError
from jitvault.plugin_api import TargetAccess, TargetPlugin
from jitvault.services.node import Node
from jitvault.storage import repositories as repo
from jitvault.storage import sealed
from jitvault.storage.tables import ACCOUNT_SECRET, TARGET_ADMIN_SECRET

MAX_SECRET_BYTES = 16 * 1024


def _secret_bytes(secret: Sensitive[str]) -> Sensitive[bytes]:
    raw = secret.reveal()
    if not raw:
        raise ValidationError("the secret is empty", hint="pass it on standard input")
    if len(raw.encode()) > MAX_SECRET_BYTES:
        raise ValidationError("the secret is too long", hint=f"at most {MAX_SECRET_BYTES} bytes")
    if looks_like_private_key(secret) and not is_usable_private_key(secret):
        raise ValidationError(
            "the private key cannot be read, or it has a passphrase",
            hint="give an OpenSSH or PEM private key without a passphrase",
        )
    return Sensitive(raw.encode())


def _parse_options(plugin: TargetPlugin, kind: str, options: dict[str, Any]) -> dict[str, Any]:
    try:
        return plugin.parse_options(options)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValidationError(f"invalid {kind} target option {where}: {first['msg']}") from None


def _enroll(
    plugin: TargetPlugin, kind: str, access: TargetAccess
) -> tuple[dict[str, Any], list[str]]:
    """The options with what the plugin reads from the target itself and pins (an SSH host key
    it was not given), before any write; and the names of the options it pinned."""
    enrolled = asyncio.run(plugin.enroll(access))
    if not enrolled:
        return access.options, []
    return _parse_options(plugin, kind, {**access.options, **enrolled}), sorted(enrolled)


def add_target(
    node: Node,
    actor: Principal,
    name: str,
    kind: str,
    options: dict[str, Any],
    admin_user: str | None = None,
    admin_secret: Sensitive[str] | None = None,
    source: str = "",
    labels: dict[str, str] | None = None,
) -> Target:
    authorize(actor, Permission.TARGET_CREATE)
    validate_target_name(name)
    plugin = node.targets.get(kind)
    clean = _parse_options(plugin, kind, options)
    if admin_user is not None:
        validate_account_name(admin_user)
    secret = _secret_bytes(admin_secret) if admin_secret is not None else None
    clean, enrolled = _enroll(plugin, kind, TargetAccess(name, clean, admin_user, admin_secret))
    with node.write() as tx:
        target = repo.target_add(tx.conn, name, kind, clean, admin_user, labels)
        if secret is not None:
            sealed.seal_column(tx.conn, tx.keyring, TARGET_ADMIN_SECRET, target.id, secret)
        tx.emit(
            AuditEvent(
                Action.TARGET_CREATED,
                actor=actor.name,
                subject=f"target:{name}",
                source=source,
                details={
                    "kind": kind,
                    "options": clean,
                    "labels": labels or {},
                    "admin_user": admin_user,
                    "admin_secret_set": secret is not None,
                    "enrolled": enrolled,
                },
            )
        )
        return repo.target_get(tx.conn, name)


def update_target(
    node: Node,
    actor: Principal,
    name: str,
    options: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    admin_user: str | None = None,
    admin_secret: Sensitive[str] | None = None,
    source: str = "",
) -> Target:
    """Change a target's options (a None or empty value removes one), replace its labels, or
    set its admin account and credential. What the plugin pins is read again when it was
    removed: ``host_key=`` (empty) re-reads an SSH target's host key from the host, as at
    registration; ``host_key=KEY`` pins the key given. Sessions already open are not touched."""
    authorize(actor, Permission.TARGET_UPDATE)
    with node.read() as conn:
        before = repo.target_get(conn, name)
    plugin = node.targets.get(before.kind)
    merged = dict(before.options)
    for key, value in (options or {}).items():
        if value is None or value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    clean = _parse_options(plugin, before.kind, merged)
    user = before.admin_user if admin_user is None else validate_account_name(admin_user)
    secret = _secret_bytes(admin_secret) if admin_secret is not None else None
    clean, enrolled = _enroll(plugin, before.kind, TargetAccess(name, clean, user, admin_secret))
    new_labels = before.labels if labels is None else labels
    changed = sorted(
        k for k in clean.keys() | before.options.keys() if clean.get(k) != before.options.get(k)
    )
    with node.write() as tx:
        current = repo.target_get(tx.conn, name)
        if current.options != before.options or current.admin_user != before.admin_user:
            raise Conflict(f"target {name!r} changed meanwhile", hint="run the update again")
        target = repo.target_update(tx.conn, name, clean, user, new_labels)
        if secret is not None:
            sealed.seal_column(tx.conn, tx.keyring, TARGET_ADMIN_SECRET, target.id, secret)
        tx.emit(
            AuditEvent(
                Action.TARGET_UPDATED,
                actor=actor.name,
                subject=f"target:{name}",
                source=source,
                details={
                    "changed_options": changed,
                    "options": clean,
                    "labels_before": before.labels,
                    "labels": new_labels,
                    "admin_user_before": before.admin_user,
                    "admin_user": user,
                    "admin_secret_set": secret is not None,
                    "enrolled": enrolled,
                },
            )
        )
        return repo.target_get(tx.conn, name)


def list_targets(node: Node, actor: Principal) -> list[Target]:
    authorize(actor, Permission.TARGET_READ)
    with node.read() as conn:
        return repo.target_list(conn)


def get_target(node: Node, actor: Principal, name: str) -> Target:
    authorize(actor, Permission.TARGET_READ)
    with node.read() as conn:
        return repo.target_get(conn, name)


def add_account(
    node: Node,
    actor: Principal,
    target_name: str,
    username: str,
    mode: AccountMode,
    secret: Sensitive[str] | None,
    source: str = "",
) -> Account:
    authorize(actor, Permission.ACCOUNT_CREATE)
    validate_account_name(username)
    if mode == AccountMode.INJECTED and secret is None:
        raise ValidationError(
            "an injected account needs its current credential",
            hint="use --password-stdin or --key-file",
        )
    value = _secret_bytes(secret) if secret is not None else None
    with node.write() as tx:
        target = repo.target_get(tx.conn, target_name)
        account = repo.account_add(tx.conn, target, username, mode)
        if value is not None:
            sealed.seal_column(tx.conn, tx.keyring, ACCOUNT_SECRET, account.id, value)
            repo.account_touch_secret(tx.conn, account.id)
        tx.emit(
            AuditEvent(
                Action.ACCOUNT_CREATED,
                actor=actor.name,
                subject=f"account:{target_name}/{username}",
                source=source,
                details={"mode": mode.value, "secret_set": value is not None},
            )
        )
        return repo.account_get(tx.conn, target_name, username)


def set_account_secret(
    node: Node,
    actor: Principal,
    target_name: str,
    username: str,
    secret: Sensitive[str],
    source: str = "",
) -> Account:
    """Replace the vaulted credential of an account (an operator correcting the vault)."""
    authorize(actor, Permission.ACCOUNT_CREATE)
    value = _secret_bytes(secret)
    with node.write() as tx:
        account = repo.account_get(tx.conn, target_name, username)
        sealed.seal_column(tx.conn, tx.keyring, ACCOUNT_SECRET, account.id, value)
        repo.account_touch_secret(tx.conn, account.id)
        tx.emit(
            AuditEvent(
                Action.ACCOUNT_SECRET_SET,
                actor=actor.name,
                subject=f"account:{target_name}/{username}",
                source=source,
            )
        )
        return repo.account_get(tx.conn, target_name, username)


def list_accounts(node: Node, actor: Principal, target_name: str | None = None) -> list[Account]:
    authorize(actor, Permission.ACCOUNT_READ)
    with node.read() as conn:
        if target_name is not None:
            repo.target_get(conn, target_name)
        return repo.account_list(conn, target_name)


def get_account(node: Node, actor: Principal, target_name: str, username: str) -> Account:
    authorize(actor, Permission.ACCOUNT_READ)
    with node.read() as conn:
        return repo.account_get(conn, target_name, username)


def account_secret(
    node: Node, account: Account, conn: Connection | None = None
) -> Sensitive[str] | None:
    """The vaulted credential, for use upstream only (read in ``conn`` if given, else in a
    read transaction of its own). Sealed: 503."""
    keyring = node.vault.keyring
    with node.read() if conn is None else nullcontext(conn) as reading:
        raw = sealed.open_column(reading, keyring, ACCOUNT_SECRET, account.id)
    return None if raw is None else raw.map(bytes.decode)


def target_access(node: Node, target: Target) -> TargetAccess:
    """What a plugin needs to act on the target as its admin (the secret stays Sensitive)."""
    return TargetAccess(
        name=target.name,
        options=target.options,
        admin_user=target.admin_user,
        admin_secret=target_admin_secret(node, target),
    )


def target_admin_secret(node: Node, target: Target) -> Sensitive[str] | None:
    keyring = node.vault.keyring
    with node.read() as conn:
        raw = sealed.open_column(conn, keyring, TARGET_ADMIN_SECRET, target.id)
    return None if raw is None else raw.map(bytes.decode)


__all__ = [
    "account_secret",
    "add_account",
    "add_target",
    "get_account",
    "get_target",
    "list_accounts",
    "list_targets",
    "set_account_secret",
    "target_access",
    "target_admin_secret",
    "update_target",
]

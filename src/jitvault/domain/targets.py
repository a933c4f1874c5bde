"""Targets (systems we broker access to) and the privileged accounts on them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from jitvault.errors import ValidationError


class AccountMode(StrEnum):
    """The credential lifecycle of an account (see ARCHITECTURE.md)."""

    INJECTED = "injected"  # shared account, checked out to one grant, rotated at check-in
    EPHEMERAL = "ephemeral"  # created per grant from a template, dropped at the end
    ELEVATION = "elevation"  # the requester's own account gains a role for the grant


class SecretKind(StrEnum):
    """What kind of secret an account needs: the core generates it, the target plugin says which."""

    PASSWORD = "password"
    SSH_KEY = "ssh-key"  # an OpenSSH private key (the target keeps its public half)


class AccountStatus(StrEnum):
    OK = "ok"
    NEEDS_OPERATOR = "needs_operator"


_TARGET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_HOST = re.compile(r"^[A-Za-z0-9.:_-]{1,253}$")
# PostgreSQL identifiers are limited to 63 bytes; longer names are rejected, never truncated.
MAX_ACCOUNT_NAME_BYTES = 63


def validate_target_name(name: str) -> str:
    if not _TARGET_NAME.fullmatch(name):
        raise ValidationError(
            f"invalid target name {name!r}",
            hint="use 1-63 characters: lower-case letters, digits, '.', '_' or '-'",
        )
    return name


def validate_host(host: str) -> str:
    if not _HOST.fullmatch(host):
        raise ValidationError(f"invalid host {host!r}", hint="give a host name or an IP address")
    return host


def validate_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise ValidationError(f"invalid port {port}", hint="use 1-65535")
    return port


def validate_account_name(name: str) -> str:
    """Account names are quoted identifiers on the target: no NUL, at most 63 bytes, not empty."""
    if not name or "\x00" in name or any(ord(c) < 32 for c in name):
        raise ValidationError(
            f"invalid account name {name!r}", hint="no control characters, not empty"
        )
    if len(name.encode()) > MAX_ACCOUNT_NAME_BYTES:
        raise ValidationError(
            f"account name is {len(name.encode())} bytes long",
            hint=f"at most {MAX_ACCOUNT_NAME_BYTES} bytes; names are rejected, never truncated",
        )
    return name


@dataclass(frozen=True)
class Target:
    id: int
    name: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    admin_user: str | None = None
    has_admin_secret: bool = False
    created_at: datetime | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Account:
    id: int
    target_id: int
    target_name: str
    username: str
    mode: AccountMode
    status: AccountStatus = AccountStatus.OK
    has_secret: bool = False
    secret_updated_at: datetime | None = None
    created_at: datetime | None = None


__all__ = [
    "MAX_ACCOUNT_NAME_BYTES",
    "Account",
    "AccountMode",
    "AccountStatus",
    "SecretKind",
    "Target",
    "validate_account_name",
    "validate_host",
    "validate_port",
    "validate_target_name",
]

"""Account templates: how an ephemeral account is made per grant, and taken away at its end.

A template's ``grant_roles`` are the roles the account is given on a PostgreSQL target, or the
Linux groups on an SSH target (same field, the target's own word). A grant copies its template
when it is created, so the account is provisioned and dropped from that snapshot, whatever the
template says later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jitvault.domain.targets import MAX_ACCOUNT_NAME_BYTES, validate_account_name
from jitvault.errors import ValidationError

ON_DROP_CHOICES = ("drop_owned", "reassign_owned")
TEMPLATE_MODES = ("ephemeral",)
#: ephemeral account names are ``jv_<template>_<grant id>``: lower-case, digits and '_' only,
#: and at most 32 bytes with a 12-digit grant id, so the same name is a valid PostgreSQL role
#: and a valid Linux user name (useradd's limit is 32)
_TEMPLATE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,15}$")
EPHEMERAL_PREFIX = "jv_"


@dataclass(frozen=True)
class Template:
    id: int
    target: str
    name: str
    mode: str = "ephemeral"
    grant_roles: tuple[str, ...] = ()
    on_drop: str = "drop_owned"
    reassign_to: str | None = None
    created_at: datetime | None = None

    def snapshot(self) -> dict[str, Any]:
        """What a grant keeps of its template (plain JSON data, no secret)."""
        return {
            "name": self.name,
            "mode": self.mode,
            "grant_roles": list(self.grant_roles),
            "on_drop": self.on_drop,
            "reassign_to": self.reassign_to,
        }


def validate_template_name(name: str) -> str:
    if not _TEMPLATE_NAME.fullmatch(name):
        raise ValidationError(
            f"invalid template name {name!r}",
            hint="use 1-16 characters: lower-case letters, digits or '_', starting with a letter",
        )
    return name


def validate_template(
    name: str, mode: str, grant_roles: tuple[str, ...], on_drop: str, reassign_to: str | None
) -> None:
    """Check a template before it is stored: every name a valid identifier on the target
    (at most 63 bytes, rejected not truncated), and a consistent drop rule."""
    validate_template_name(name)
    if mode not in TEMPLATE_MODES:
        raise ValidationError(f"unknown template mode {mode!r}", hint="use --mode ephemeral")
    for role in grant_roles:
        validate_account_name(role)
    if len(set(grant_roles)) != len(grant_roles):
        raise ValidationError("a role is listed twice in --grant-roles")
    if on_drop not in ON_DROP_CHOICES:
        raise ValidationError(
            f"unknown --on-drop {on_drop!r}", hint=f"use one of {', '.join(ON_DROP_CHOICES)}"
        )
    if on_drop == "reassign_owned":
        if not reassign_to:
            raise ValidationError(
                "--on-drop reassign_owned needs --reassign-to ROLE",
                hint="the role that takes over what the ephemeral account created",
            )
        validate_account_name(reassign_to)
    elif reassign_to:
        raise ValidationError("--reassign-to goes with --on-drop reassign_owned")


def ephemeral_username(template: str, grant_id: int) -> str:
    """The account name an ephemeral grant gets: ``jv_<template>_<grant id>`` (validated)."""
    name = f"{EPHEMERAL_PREFIX}{validate_template_name(template)}_{grant_id}"
    if len(name.encode()) > MAX_ACCOUNT_NAME_BYTES:  # cannot happen with a 16-char template
        raise ValidationError(f"ephemeral account name {name!r} is too long")
    return name


__all__ = [
    "EPHEMERAL_PREFIX",
    "ON_DROP_CHOICES",
    "TEMPLATE_MODES",
    "Template",
    "ephemeral_username",
    "validate_template",
    "validate_template_name",
]

"""Users, roles and the rules on their names."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from jitvault.errors import ValidationError


class Role(StrEnum):
    """What a user may do. Each endpoint names the roles it admits; everything else is denied."""

    REQUESTER = "requester"
    APPROVER = "approver"
    ADMIN = "admin"
    AUDITOR = "auditor"


_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_GROUP = _USERNAME


def normalize_username(name: str) -> str:
    """The canonical form users are stored and compared under: NFKC, then case-folded.

    So ``Alice``, ``ALICE`` and the full-width form of alice are one user, for login, lockout
    and uniqueness alike.
    """
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


def validate_username(name: str) -> str:
    """Normalize and check a user name; raise :class:`ValidationError` with the rule if bad."""
    norm = normalize_username(name)
    if not _USERNAME.fullmatch(norm):
        raise ValidationError(
            f"invalid user name {name!r}",
            hint="use 1-63 characters: lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    return norm


def validate_group(name: str) -> str:
    norm = normalize_username(name)
    if not _GROUP.fullmatch(norm):
        raise ValidationError(
            f"invalid group name {name!r}",
            hint="use 1-63 characters: lower-case letters, digits, '.', '_' or '-'",
        )
    return norm


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: Role
    groups: tuple[str, ...] = ()
    disabled: bool = False
    created_at: datetime | None = None


@dataclass(frozen=True)
class Principal:
    """Who is calling: an authenticated user, resolved from an API token."""

    user_id: int
    name: str
    role: Role
    groups: tuple[str, ...] = field(default=())
    token_id: str | None = None


@dataclass(frozen=True)
class UserSshKey:
    """An SSH public key registered to a user: with a live grant of theirs, it logs them in
    to the SSH session proxy. One key belongs to one user (the fingerprint is unique)."""

    id: int
    user: str
    algorithm: str
    fingerprint: str  # "SHA256:..." as ssh-keygen -l prints it
    public_key: str  # "<algorithm> <base64>", without the comment
    comment: str
    created_at: datetime | None = None


__all__ = [
    "Principal",
    "Role",
    "User",
    "UserSshKey",
    "normalize_username",
    "validate_group",
    "validate_username",
]

"""Credential lifecycle on Linux targets over SSH (placeholder: being written)."""

from __future__ import annotations

from datetime import datetime

from jitvault.domain import Sensitive
from jitvault.plugin_api import AccountTemplate, TargetAccess, Unsupported


async def verify(target: TargetAccess, username: str, secret: Sensitive[str]) -> bool:
    raise Unsupported("ssh targets cannot verify credentials yet")


async def rotate(target: TargetAccess, username: str, new: Sensitive[str]) -> None:
    raise Unsupported("ssh targets cannot rotate credentials yet")


async def create_account(
    target: TargetAccess,
    template: AccountTemplate,
    username: str,
    secret: Sensitive[str],
    expires_at: datetime,
) -> None:
    raise Unsupported("ssh targets cannot create ephemeral accounts yet")


async def drop_account(target: TargetAccess, template: AccountTemplate, username: str) -> None:
    raise Unsupported("ssh targets cannot drop ephemeral accounts yet")


async def elevate(target: TargetAccess, username: str, role: str, expires_at: datetime) -> None:
    raise Unsupported("ssh targets cannot elevate accounts yet")


async def revoke(target: TargetAccess, username: str, role: str) -> None:
    raise Unsupported("ssh targets cannot revoke elevations yet")

"""SSH target plugin: the ``ssh`` kind, its options, its credential lifecycle and its proxy.

The lifecycle on Linux targets (verify, rotate a password or key, ephemeral users, group and
sudo elevation) lives in :mod:`.lifecycle`; the session proxy (asyncssh server, upstream login,
relay, recording) in :mod:`.frontend`.
"""

from __future__ import annotations

import functools
from datetime import datetime

from jitvault.domain import Sensitive
from jitvault.plugin_api import AccountTemplate, TargetAccess, TargetPlugin
from jitvault_ssh import lifecycle
from jitvault_ssh.frontend import SshFrontend
from jitvault_ssh.options import SshTargetOptions


class SshTarget(TargetPlugin):
    """Linux hosts over SSH. Every method is async, idempotent and safe to retry."""

    kind = "ssh"
    config_model = SshTargetOptions

    async def verify(self, target: TargetAccess, username: str, secret: Sensitive[str]) -> bool:
        return await lifecycle.verify(target, username, secret)

    async def rotate(self, target: TargetAccess, username: str, new: Sensitive[str]) -> None:
        await lifecycle.rotate(target, username, new)

    async def create_account(
        self,
        target: TargetAccess,
        template: AccountTemplate,
        username: str,
        secret: Sensitive[str],
        expires_at: datetime,
    ) -> None:
        await lifecycle.create_account(target, template, username, secret, expires_at)

    async def drop_account(
        self, target: TargetAccess, template: AccountTemplate, username: str
    ) -> None:
        await lifecycle.drop_account(target, template, username)

    async def elevate(
        self, target: TargetAccess, username: str, role: str, expires_at: datetime
    ) -> None:
        await lifecycle.elevate(target, username, role, expires_at)

    async def revoke(self, target: TargetAccess, username: str, role: str) -> None:
        await lifecycle.revoke(target, username, role)

    def frontend(self) -> SshFrontend:
        """The SSH session proxy's front end: one per process."""
        return _frontend()


@functools.cache
def _frontend() -> SshFrontend:
    return SshFrontend()


__all__ = ["SshTarget", "SshTargetOptions"]

"""SSH target plugin: the ``ssh`` kind, its options, its credential lifecycle and its proxy.

The lifecycle on Linux targets (verify, rotate a password or key, ephemeral users, group and
sudo elevation) lives in :mod:`.lifecycle`; the session proxy (asyncssh server, upstream login,
relay, recording) in :mod:`.frontend`.
"""

from __future__ import annotations

import functools
import warnings
from datetime import datetime
from typing import Any

with warnings.catch_warnings():
    # asyncssh (2.24) names cryptography's DSA types as it is imported, and cryptography 51
    # warns at each of those names that DSA is deprecated: five warnings on standard error from
    # every process that loads this plugin (the server, the CLI). jitvault neither makes nor
    # accepts DSA keys (crypto/ssh_public_keys.py refuses ssh-dss), so they say nothing to a
    # user; only those are silenced, and only while asyncssh loads.
    warnings.filterwarnings("ignore", message="DSA is deprecated", category=UserWarning)
    import asyncssh  # noqa: F401

from jitvault.domain import SecretKind, Sensitive
from jitvault.errors import ValidationError
from jitvault.plugin_api import AccountTemplate, TargetAccess, TargetPlugin, TargetRejected
from jitvault_ssh import connect, lifecycle
from jitvault_ssh.frontend import SshFrontend
from jitvault_ssh.options import SshTargetOptions


class SshTarget(TargetPlugin):
    """Linux hosts over SSH. Every method is async, idempotent and safe to retry.

    Accounts log in with a password or a private key; the core generates a key for an account
    that has one (:meth:`secret_kind`). Elevation roles: ``group:NAME`` (or ``NAME``), ``sudo``
    and ``sudo:RULE`` (see :mod:`jitvault_ssh.lifecycle`).
    """

    kind = "ssh"
    config_model = SshTargetOptions

    async def enroll(self, target: TargetAccess) -> dict[str, Any]:
        """Pin the host key the server presents now, unless one was given."""
        opts = connect.options_of(target)
        if opts.host_key:
            try:
                connect.pinned_key(opts, target.name)
            except TargetRejected:
                raise ValidationError(
                    "the host_key option is not an SSH public key",
                    hint="as 'ssh-ed25519 AAAA...', or leave it out to read it from the host",
                ) from None
            return {}
        return {
            "host_key": await connect.fetch_host_key(opts.host, opts.port, opts.connect_timeout)
        }

    def secret_kind(self, current: Sensitive[str] | None) -> SecretKind:
        """A key stays a key and a password a password; a new account gets a key."""
        if current is None or connect.is_private_key(current):
            return SecretKind.SSH_KEY
        return SecretKind.PASSWORD

    async def verify(self, target: TargetAccess, username: str, secret: Sensitive[str]) -> bool:
        return await lifecycle.verify(target, username, secret)

    async def rotate(
        self,
        target: TargetAccess,
        username: str,
        new: Sensitive[str],
        current: Sensitive[str] | None = None,
    ) -> None:
        await lifecycle.rotate(target, username, new, current)

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

    async def has_role(self, target: TargetAccess, username: str, role: str) -> bool:
        return await lifecycle.has_role(target, username, role)

    def frontend(self) -> SshFrontend:
        """The SSH session proxy's front end: one per process."""
        return _frontend()


@functools.cache
def _frontend() -> SshFrontend:
    return SshFrontend()


__all__ = ["SshTarget", "SshTargetOptions"]

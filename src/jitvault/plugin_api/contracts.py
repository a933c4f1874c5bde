"""The contracts plugins implement (target plugins: the shape of Vault's database plugin v5).

The core generates every secret; a plugin only applies it. Every call is async, idempotent and
safe to retry. A plugin that does not support an operation leaves the default, which raises
:class:`Unsupported`. Plugins must never put a secret into an exception message or a log line:
errors say what failed (and the server's SQLSTATE or similar code), not with which value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from jitvault.domain import SecretKind, Sensitive
from jitvault.errors import JitvaultError

if TYPE_CHECKING:
    from jitvault.plugin_api.proxy import ProtocolFrontend


class Unsupported(JitvaultError):
    code = "unsupported"


class TargetRejected(JitvaultError):
    """The target refused the operation (bad credential, permission denied, ...).

    ``retryable`` says whether trying again later may help (a timeout, a restart) or not
    (a rejected password).
    """

    code = "target_rejected"

    def __init__(self, message: str, *, hint: str | None = None, retryable: bool = False):
        super().__init__(message, hint=hint)
        self.retryable = retryable


@dataclass(frozen=True)
class TargetAccess:
    """What a plugin needs to reach a target as its administrator.

    ``options`` are the validated options of the target's ``config_model``; ``admin_secret`` is
    revealed only by the plugin, at the line that logs in.
    """

    name: str
    options: dict[str, Any]
    admin_user: str | None = None
    admin_secret: Sensitive[str] | None = None


@dataclass(frozen=True)
class AccountTemplate:
    """How an ephemeral account is made and taken away (stored with the grant that uses it)."""

    name: str
    grant_roles: tuple[str, ...] = ()
    #: "drop_owned" drops what the account created; "reassign_owned" gives it to reassign_to
    on_drop: str = "drop_owned"
    reassign_to: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Plugin:
    """What every plugin has: a kind (its name) and a pydantic model of its options."""

    kind: ClassVar[str]
    config_model: ClassVar[type[BaseModel]]


class TargetPlugin(Plugin):
    """Base class of target plugins, found through the ``jitvault.targets`` entry point."""

    def parse_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Validate target options with :attr:`config_model`; return them normalized."""
        return self.config_model.model_validate({"kind": self.kind, **options}).model_dump(
            mode="json"
        )

    async def enroll(self, target: TargetAccess) -> dict[str, Any]:
        """Options to pin when the target is registered (e.g. its SSH host key), read from the
        target itself; the core merges them into the target's options. Default: nothing."""
        return {}

    def secret_kind(self, current: Sensitive[str] | None) -> SecretKind:
        """Which kind of secret the core should generate for an account whose secret is now
        ``current`` (None: a new ephemeral account). Default: a password."""
        return SecretKind.PASSWORD

    async def verify(self, target: TargetAccess, username: str, secret: Sensitive[str]) -> bool:
        """Can ``username`` log in with ``secret``? False if the target says no; raises
        :class:`TargetRejected` (retryable) if the target cannot be asked."""
        raise Unsupported(f"{self.kind} targets cannot verify credentials yet")

    async def rotate(
        self,
        target: TargetAccess,
        username: str,
        new: Sensitive[str],
        current: Sensitive[str] | None = None,
    ) -> None:
        """Set ``new`` as the secret of ``username`` (idempotent: setting it twice is fine).

        ``current`` is the secret the vault holds now, which the target must stop accepting
        (an SSH key's line is removed); None if unknown."""
        raise Unsupported(f"{self.kind} targets cannot rotate credentials yet")

    async def create_account(
        self,
        target: TargetAccess,
        template: AccountTemplate,
        username: str,
        secret: Sensitive[str],
        expires_at: datetime,
    ) -> None:
        """Create ``username`` from ``template`` (idempotent: an existing one is updated)."""
        raise Unsupported(f"{self.kind} targets cannot create ephemeral accounts yet")

    async def drop_account(
        self, target: TargetAccess, template: AccountTemplate, username: str
    ) -> None:
        """End the account's sessions and drop it; no error if it is already gone."""
        raise Unsupported(f"{self.kind} targets cannot drop ephemeral accounts yet")

    async def elevate(
        self, target: TargetAccess, username: str, role: str, expires_at: datetime
    ) -> None:
        """Give ``username`` the ``role`` (idempotent)."""
        raise Unsupported(f"{self.kind} targets cannot elevate accounts yet")

    async def revoke(self, target: TargetAccess, username: str, role: str) -> None:
        """Take ``role`` back from ``username``; no error if already revoked or gone."""
        raise Unsupported(f"{self.kind} targets cannot revoke elevations yet")

    def frontend(self) -> ProtocolFrontend | None:
        """The session-proxy front end of this kind, or None if it has no proxy."""
        return None


class NotifierPlugin(Plugin):
    """Base class of notifier plugins, found through the ``jitvault.notifiers`` entry point.

    :meth:`deliver` sends one event (plain JSON data, never a secret of the vault) and raises on
    failure; the core retries with backoff. ``signing_secret`` comes from the notifier's
    configuration (a file or an environment variable), never from the vault.
    """

    def parse_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return self.config_model.model_validate(options).model_dump(mode="json")

    async def deliver(
        self,
        options: dict[str, Any],
        event: dict[str, Any],
        signing_secret: Sensitive[str] | None,
    ) -> None:
        raise Unsupported(f"{self.kind} notifier cannot deliver")


__all__ = [
    "AccountTemplate",
    "NotifierPlugin",
    "Plugin",
    "TargetAccess",
    "TargetPlugin",
    "TargetRejected",
    "Unsupported",
]

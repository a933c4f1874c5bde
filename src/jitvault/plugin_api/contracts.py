"""The contract target plugins implement (the shape of Vault's database plugin v5).

The core generates every secret; a plugin only applies it. Every call is async, idempotent and
safe to retry. A plugin that does not support an operation leaves the default, which raises
:class:`Unsupported`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel

from jitvault.domain import Sensitive
from jitvault.errors import JitvaultError


class Unsupported(JitvaultError):
    code = "unsupported"


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

    async def verify(self, target: dict[str, Any], username: str, secret: Sensitive[str]) -> bool:
        raise Unsupported(f"{self.kind} targets cannot verify credentials yet")

    async def rotate(
        self,
        target: dict[str, Any],
        username: str,
        current: Sensitive[str],
        new: Sensitive[str],
    ) -> None:
        raise Unsupported(f"{self.kind} targets cannot rotate credentials yet")

    async def create_account(
        self,
        target: dict[str, Any],
        template: dict[str, Any],
        username: str,
        secret: Sensitive[str],
        expires_at: datetime,
    ) -> None:
        raise Unsupported(f"{self.kind} targets cannot create ephemeral accounts yet")

    async def drop_account(self, target: dict[str, Any], username: str) -> None:
        raise Unsupported(f"{self.kind} targets cannot drop ephemeral accounts yet")

    async def elevate(
        self, target: dict[str, Any], username: str, role: str, expires_at: datetime
    ) -> None:
        raise Unsupported(f"{self.kind} targets cannot elevate accounts yet")

    async def revoke(self, target: dict[str, Any], username: str, role: str) -> None:
        raise Unsupported(f"{self.kind} targets cannot revoke elevations yet")


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


__all__ = ["NotifierPlugin", "Plugin", "TargetPlugin", "Unsupported"]

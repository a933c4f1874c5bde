"""Notifications: enqueued in the transaction of the change they announce, delivered later.

Each (event, notifier) pair is a background job with its own retries, so a failing webhook
never blocks or fails the workflow.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from jitvault.config import NotifierSettings
from jitvault.domain import Sensitive
from jitvault.errors import ConfigError, NotFound
from jitvault.services.node import Node, Tx
from jitvault.storage import workflow

EVENTS = (
    "request.created",
    "request.decided",
    "grant.created",
    "grant.expiring",
    "grant.revoked",
    "grant.lapsed",
    "break_glass",
    "account.needs_operator",
)
DELIVERY_TIMEOUT = 15.0


def notify(node: Node, tx: Tx, event: str, data: dict[str, Any]) -> int:
    """Queue ``event`` for every notifier subscribed to it; returns how many were queued."""
    assert event in EVENTS, event
    payload = {"event": event, "at": node.clock().isoformat(), **data}
    queued = 0
    for n in node.settings.notifiers:
        if "*" in n.events or event in n.events:
            workflow.job_enqueue(
                tx.conn,
                "notify",
                {"notifier": n.name, "event": payload},
                run_after=node.clock(),
                max_attempts=8,
            )
            queued += 1
    return queued


def _notifier(node: Node, name: str) -> NotifierSettings:
    for n in node.settings.notifiers:
        if n.name == name:
            return n
    raise NotFound(f"notifier {name!r} is no longer configured")


def _signing_secret(cfg: NotifierSettings) -> Sensitive[str] | None:
    if cfg.secret_file is not None:
        try:
            return Sensitive(cfg.secret_file.read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise ConfigError(f"cannot read the secret file of notifier {cfg.name!r}") from exc
    if cfg.secret_env:
        value = os.environ.get(cfg.secret_env)
        if not value:
            raise ConfigError(f"notifier {cfg.name!r}: ${cfg.secret_env} is not set")
        return Sensitive(value)
    return None


def deliver(node: Node, payload: dict[str, Any]) -> None:
    """Send one queued notification (called by the job runner); raises on failure."""
    cfg = _notifier(node, payload["notifier"])
    plugin = node.notifiers.get(cfg.kind)
    options = plugin.parse_options(cfg.options)
    secret = _signing_secret(cfg)

    async def _send() -> None:
        await asyncio.wait_for(
            plugin.deliver(options, payload["event"], secret), timeout=DELIVERY_TIMEOUT
        )

    asyncio.run(_send())


__all__ = ["EVENTS", "deliver", "notify"]

"""Initializing a node, the first admin, and the status a health check reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from jitvault.audit import Action, AuditEvent
from jitvault.config import Settings, settings_to_toml
from jitvault.domain import Role, Sensitive, validate_username
from jitvault.errors import Conflict
from jitvault.services import users
from jitvault.services.node import Node
from jitvault.storage import repositories as repo

DEV_TOKEN = "jitvault dev"


@dataclass
class InitResult:
    admin_name: str
    admin_token: Sensitive[str]
    shares: list[Sensitive[str]] = field(default_factory=list)


def write_config(settings: Settings) -> Path:
    """Write ``config.toml`` into the data directory unless one is there; return its path."""
    path = settings.config_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    if not path.exists():
        path.write_text(tomli_w.dumps(settings_to_toml(settings)), encoding="utf-8")
    return path


def initialize(
    node: Node,
    admin_name: str = "admin",
    shares: int | None = None,
    threshold: int | None = None,
    token_description: str = "bootstrap",
) -> InitResult:
    """Create the keyring, the audit chain and the first admin with a token."""
    name = validate_username(admin_name)
    key_shares = node.vault.initialize(shares=shares, threshold=threshold)
    _, token = users.bootstrap_admin(node, name, token_description)
    return InitResult(name, token, key_shares)


def dev_admin_token(node: Node, admin_name: str = "admin") -> Sensitive[str]:
    """A fresh token for the dev admin, creating the admin on first use."""
    name = validate_username(admin_name)
    with node.read() as conn:
        found = repo.user_find(conn, name)
    if found is None:
        return users.bootstrap_admin(node, name, DEV_TOKEN)[1]
    user = found[0]
    if user.role != Role.ADMIN or user.disabled:
        raise Conflict(f"user {name!r} exists but is not an enabled admin")
    # one live dev token at a time: the one printed last
    with node.write() as tx:
        for token_id in repo.token_ids_described(tx.conn, user.id, DEV_TOKEN):
            repo.token_revoke(tx.conn, token_id)
            tx.emit(
                AuditEvent(
                    Action.TOKEN_REVOKED,
                    actor="system",
                    subject=f"user:{user.name}",
                    source="local",
                    details={"token_id": token_id, "reason": "replaced by jitvault dev"},
                )
            )
    return users.issue_api_token(node, user, description=DEV_TOKEN, actor="system", source="local")


__all__ = ["InitResult", "dev_admin_token", "initialize", "write_config"]

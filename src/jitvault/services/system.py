"""Initializing a node, the first admin, and the status a health check reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from jitvault.config import Settings, settings_to_toml
from jitvault.domain import Role, Sensitive, validate_username
from jitvault.errors import Conflict
from jitvault.services import users
from jitvault.services.node import Node
from jitvault.storage import repositories as repo


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
) -> InitResult:
    """Create the keyring, the audit chain and the first admin with a token."""
    name = validate_username(admin_name)
    key_shares = node.vault.initialize(shares=shares, threshold=threshold)
    _, token = users.bootstrap_admin(node, name)
    return InitResult(name, token, key_shares)


def dev_admin_token(node: Node, admin_name: str = "admin") -> Sensitive[str]:
    """A fresh token for the dev admin, creating the admin on first use."""
    name = validate_username(admin_name)
    with node.read() as conn:
        found = repo.user_find(conn, name)
    if found is None:
        return users.bootstrap_admin(node, name)[1]
    user = found[0]
    if user.role != Role.ADMIN or user.disabled:
        raise Conflict(f"user {name!r} exists but is not an enabled admin")
    return users.issue_api_token(
        node, user, description="jitvault dev", actor="system", source="local"
    )


__all__ = ["InitResult", "dev_admin_token", "initialize", "write_config"]

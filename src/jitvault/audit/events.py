"""Typed audit events. Every action jitvault takes is one of these, emitted once."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from jitvault.domain import Sensitive


class Action(StrEnum):
    SYSTEM_INIT = "system.init"
    VAULT_UNSEALED = "vault.unsealed"
    KEY_ROTATED = "key.rotated"
    KEY_REENCRYPTED = "key.reencrypted"
    KEY_RETIRED = "key.retired"
    USER_CREATED = "user.created"
    USER_UPDATED = "user.updated"
    USER_DISABLED = "user.disabled"
    USER_ENABLED = "user.enabled"
    TOKEN_CREATED = "token.created"
    TOKEN_REVOKED = "token.revoked"
    SSH_KEY_ADDED = "ssh_key.added"
    SSH_KEY_REMOVED = "ssh_key.removed"
    AUTH_LOGIN = "auth.login"
    AUTH_FAILED = "auth.failed"
    AUTH_LOCKED_OUT = "auth.locked_out"
    TARGET_CREATED = "target.created"
    TARGET_UPDATED = "target.updated"
    ACCOUNT_CREATED = "account.created"
    ACCOUNT_SECRET_SET = "account.secret_set"
    AUDIT_VERIFIED = "audit.verified"
    AUDIT_EXPORTED = "audit.exported"
    POLICY_APPLIED = "policy.applied"
    REQUEST_CREATED = "request.created"
    REQUEST_APPROVED = "request.approved"
    REQUEST_DENIED = "request.denied"
    REQUEST_CANCELLED = "request.cancelled"
    REQUEST_EXPIRED = "request.expired"
    REQUEST_REVIEWED = "request.reviewed"
    BREAK_GLASS = "request.break_glass"
    GRANT_CREATED = "grant.created"
    GRANT_ACTIVATED = "grant.activated"
    GRANT_ENDED = "grant.ended"
    GRANT_REVOKED = "grant.revoked"
    GRANT_CLEANUP = "grant.cleanup"
    JOB_DEAD = "job.dead"
    ROTATION_STARTED = "rotation.started"
    ROTATION_REJECTED = "rotation.rejected"
    ROTATION_COMPLETED = "rotation.completed"
    ROTATION_ROLLED_BACK = "rotation.rolled_back"
    ACCOUNT_NEEDS_OPERATOR = "account.needs_operator"
    ACCOUNT_VERIFIED = "account.verified"
    SESSION_TOKEN_ISSUED = "session.token_issued"
    SESSION_OPENED = "session.opened"
    SESSION_REFUSED = "session.refused"
    SESSION_ENDED = "session.ended"
    TEMPLATE_CREATED = "template.created"
    TEMPLATE_REMOVED = "template.removed"
    GRANT_PROVISIONED = "grant.provisioned"
    GRANT_QUEUED = "grant.queued"
    GRANT_LAPSED = "grant.lapsed"
    ACCOUNT_CHECKED_OUT = "account.checked_out"
    ACCOUNT_CHECKED_IN = "account.checked_in"


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    DENIED = "denied"


_SCALARS = (str, int, float, bool, type(None))


def _check_details(value: Any, path: str = "details") -> None:
    """Refuse anything that is not plain data; a Sensitive value can never enter the log."""
    if isinstance(value, Sensitive):
        raise TypeError(f"{path} holds a Sensitive value; secrets never enter the audit log")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{path} has a non-string key")
            _check_details(v, f"{path}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_details(v, f"{path}[{i}]")
    elif not isinstance(value, _SCALARS):
        raise TypeError(f"{path} holds a {type(value).__name__}; only plain data is audited")


@dataclass(frozen=True)
class AuditEvent:
    action: Action
    actor: str
    subject: str = ""
    outcome: Outcome = Outcome.SUCCESS
    source: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("actor", "subject", "source"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a plain string; secrets never enter the audit log")
        _check_details(self.details)


__all__ = ["Action", "AuditEvent", "Outcome"]

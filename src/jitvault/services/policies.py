"""Policy as code: apply (validated, versioned, audited), show, and test a policy document."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import yaml
from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import Connection

from jitvault.audit import Action, AuditEvent
from jitvault.domain import (
    AccessKind,
    Decision,
    Permission,
    PolicyDocument,
    Principal,
    RequestFacts,
    authorize,
    evaluate,
    validate_username,
)
from jitvault.errors import ValidationError
from jitvault.services.node import Node
from jitvault.storage import repositories as repo
from jitvault.storage import workflow

MAX_POLICY_BYTES = 256 * 1024


@functools.lru_cache(maxsize=16)
def _parse_cached(text: str) -> PolicyDocument:
    return parse_policy(text)


def parse_policy(text: str) -> PolicyDocument:
    """Parse and validate a YAML (or JSON) policy; errors name the rule and field."""
    if len(text.encode()) > MAX_POLICY_BYTES:
        raise ValidationError("the policy document is too large", hint="at most 256 KiB")
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ValidationError(f"the policy is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValidationError("the policy must be a mapping with a 'rules' list")
    try:
        return PolicyDocument.model_validate(data)
    except PydanticValidationError as exc:
        problems = []
        for err in exc.errors()[:5]:
            loc = list(err.get("loc", ()))
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
            if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
                rules = data.get("rules") or []
                if loc[1] < len(rules) and isinstance(rules[loc[1]], dict):
                    where += f" (rule {rules[loc[1]].get('name', '?')!r})"
            problems.append(f"{where or 'policy'}: {err.get('msg')}")
        raise ValidationError("invalid policy: " + "; ".join(problems)) from None


@dataclass(frozen=True)
class ActivePolicy:
    version: int
    sha256: str
    document: PolicyDocument
    text: str


def active_policy(conn: Connection) -> ActivePolicy | None:
    row = workflow.policy_current(conn)
    if row is None:
        return None
    # parsed once per document, not on every request (the document is immutable per version)
    return ActivePolicy(row.version, row.sha256, _parse_cached(row.document), row.document)


def rule_allows_forwarding(conn: Connection, request_id: int) -> bool:
    """Does the policy rule that decided this request (in the version that decided it, so a
    later policy change does not widen a live grant) allow port forwarding?"""
    decided = workflow.policy_rule_of_request(conn, request_id)
    if decided is None:
        return False
    document, name = decided
    return any(r.allow_forwarding for r in _parse_cached(document).rules if r.name == name)


def apply_policy(node: Node, actor: Principal, text: str, source: str = "") -> dict[str, Any]:
    authorize(actor, Permission.POLICY_APPLY)
    doc = parse_policy(text)
    sha = hashlib.sha256(text.encode()).hexdigest()
    with node.write() as tx:
        current = workflow.policy_current(tx.conn)
        if current is not None and current.sha256 == sha:
            return {
                "version": current.version,
                "sha256": sha,
                "rules": len(doc.rules),
                "changed": False,
            }
        version = workflow.policy_add(tx.conn, text, sha, actor.name)
        tx.emit(
            AuditEvent(
                Action.POLICY_APPLIED,
                actor=actor.name,
                subject=f"policy:v{version}",
                source=source,
                details={
                    "sha256": sha,
                    "rules": [r.name for r in doc.rules],
                    "previous_version": current.version if current else None,
                },
            )
        )
    return {"version": version, "sha256": sha, "rules": len(doc.rules), "changed": True}


def show_policy(node: Node, actor: Principal) -> dict[str, Any]:
    authorize(actor, Permission.POLICY_READ)
    with node.read() as conn:
        current = workflow.policy_current(conn)
        history = workflow.policy_history(conn)
    if current is None:
        return {"version": None, "document": "", "sha256": None, "history": []}
    return {
        "version": current.version,
        "document": current.document,
        "sha256": current.sha256,
        "history": history,
    }


def gather_facts(
    conn: Connection,
    user_name: str,
    target_name: str,
    kind: AccessKind,
    name: str,
    duration: timedelta,
    reason: str,
    at: datetime,
    break_glass: bool = False,
) -> RequestFacts:
    user = repo.user_get(conn, validate_username(user_name))
    target = repo.target_get(conn, target_name)
    return RequestFacts(
        requester=user.name,
        groups=user.groups,
        target=target.name,
        kind=kind,
        name=name,
        duration=duration,
        reason=reason,
        at=at,
        target_labels=target.labels,
        break_glass=break_glass,
    )


def check_policy(
    node: Node,
    actor: Principal,
    text: str | None,
    as_user: str,
    target: str,
    kind: AccessKind,
    name: str,
    duration: timedelta,
    reason: str = "",
    at: datetime | None = None,
    break_glass: bool = False,
) -> Decision:
    """What ``text`` (or the active policy) would decide, with the rule that decides it."""
    authorize(actor, Permission.POLICY_TEST)
    with node.read() as conn:
        facts = gather_facts(
            conn, as_user, target, kind, name, duration, reason, at or node.clock(), break_glass
        )
        if text is not None:
            doc = parse_policy(text)
        else:
            active = active_policy(conn)
            doc = active.document if active else PolicyDocument()
    return evaluate(doc, facts)


__all__ = [
    "ActivePolicy",
    "active_policy",
    "apply_policy",
    "check_policy",
    "gather_facts",
    "parse_policy",
    "show_policy",
]

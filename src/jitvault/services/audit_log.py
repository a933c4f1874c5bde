"""Reading, verifying and exporting the audit log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from jitvault import audit
from jitvault.audit import Action, AuditEvent, Outcome, VerifyResult
from jitvault.domain import Permission, Principal, authorize
from jitvault.services.node import Node


def verify(node: Node, actor: Principal, source: str = "") -> VerifyResult:
    authorize(actor, Permission.AUDIT_READ)
    return verify_chain(node, actor.name, source)


def verify_chain(node: Node, actor: str, source: str = "") -> VerifyResult:
    keyring = node.vault.keyring
    with node.read() as conn:
        result = audit.verify(conn, keyring)
    # The verification is itself audited, after the walk, so it never checks its own row.
    with node.write() as tx:
        tx.emit(
            AuditEvent(
                Action.AUDIT_VERIFIED,
                actor=actor,
                outcome=Outcome.SUCCESS if result.ok else Outcome.FAILURE,
                source=source,
                details=result.as_dict(),
            )
        )
    return result


def list_events(
    node: Node,
    actor: Principal,
    since: datetime | None = None,
    limit: int | None = 1000,
    after_seq: int = 0,
) -> list[dict[str, Any]]:
    authorize(actor, Permission.AUDIT_READ)
    with node.read() as conn:
        return audit.list_events(conn, since=since, limit=limit, after_seq=after_seq)


def export_jsonl(
    node: Node, actor: Principal, since: datetime | None = None, source: str = ""
) -> Iterator[str]:
    """Every event as one JSON line, in chain order (streamed in pages).

    Authorization and the export's own audit event happen now, before the first line is sent.
    """
    authorize(actor, Permission.AUDIT_READ)
    with node.write() as tx:
        tx.emit(
            AuditEvent(
                Action.AUDIT_EXPORTED,
                actor=actor.name,
                source=source,
                details={"since": since.isoformat() if since else None},
            )
        )
    return _pages(node, since)


def _pages(node: Node, since: datetime | None) -> Iterator[str]:
    after = 0
    while True:
        with node.read() as conn:
            page = audit.list_events(conn, since=since, limit=1000, after_seq=after)
        if not page:
            return
        for event in page:
            yield json.dumps(event, sort_keys=True, ensure_ascii=False) + "\n"
        after = page[-1]["seq"]


__all__ = ["export_jsonl", "list_events", "verify", "verify_chain"]

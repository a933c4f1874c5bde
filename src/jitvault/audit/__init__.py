"""Typed audit events, the hash-chained fail-closed writer, verification and export."""

from jitvault.audit.chain import GENESIS, VerifyResult, emit, init_chain, list_events, verify
from jitvault.audit.events import Action, AuditEvent, Outcome

__all__ = [
    "GENESIS",
    "Action",
    "AuditEvent",
    "Outcome",
    "VerifyResult",
    "emit",
    "init_chain",
    "list_events",
    "verify",
]

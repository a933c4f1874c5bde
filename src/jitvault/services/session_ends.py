"""The one home of a session's ``session.ended`` audit event, whatever ended it: its client or
its proxy (:func:`jitvault.services.sessions.close_session`, the sweep of lost sessions too),
its grant's end or revoke (:mod:`jitvault.services.grants`), or the removal of the SSH key it
was opened with (:mod:`jitvault.services.ssh_keys`). Each is written in the transaction that
ends the session, once: an audit query by ``session:ID`` shows every session's end."""

from __future__ import annotations

from collections.abc import Iterable

from jitvault.audit import Action, AuditEvent
from jitvault.services.node import Tx


def audit_ended(tx: Tx, session_ids: Iterable[int], reason: str, actor: str = "system") -> None:
    """Audit the end of each of these sessions (which this transaction has just ended), with
    why (the sessions' ``end_reason``) and who caused it."""
    for session_id in session_ids:
        tx.emit(
            AuditEvent(
                Action.SESSION_ENDED,
                actor=actor,
                subject=f"session:{session_id}",
                details={"reason": reason},
            )
        )


__all__ = ["audit_ended"]

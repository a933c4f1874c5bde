"""Key rotation: a new key term now, re-encryption of every stored value in the background.

Each batch moves in one transaction, so a crash (even ``kill -9``) leaves every value either
under the old term or the new one, and the old term's key stays until nothing uses it. Restarting
resumes where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from jitvault.audit import Action, AuditEvent
from jitvault.domain import Permission, Principal, authorize
from jitvault.services.node import Node
from jitvault.storage import sealed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RekeyStatus:
    active_term: int
    terms: list[int]
    remaining: int

    @property
    def done(self) -> bool:
        return self.remaining == 0 and len(self.terms) == 1

    def as_dict(self) -> dict[str, object]:
        return {
            "active_term": self.active_term,
            "terms": self.terms,
            "remaining": self.remaining,
            "done": self.done,
        }


def rotate_key(node: Node, actor: Principal, source: str = "") -> RekeyStatus:
    """Start a new key term. Returns at once; the worker re-encrypts in the background."""
    authorize(actor, Permission.KEY_ROTATE)
    term = node.vault.rotate(actor.name, source)
    log.info("key rotated to term %s by %s (%s)", term, actor.name, source or "local")
    return status(node)


def rekey_status(node: Node, actor: Principal) -> RekeyStatus:
    authorize(actor, Permission.KEY_STATUS)
    return status(node)


def status(node: Node) -> RekeyStatus:
    keyring = node.vault.keyring
    active = keyring.active_term
    with node.read() as conn:
        remaining = sealed.count_below(conn, active)
    return RekeyStatus(active, keyring.terms, remaining)


def reencrypt_step(node: Node, batch: int = 200) -> int:
    """Move one batch to the active term; when none is left, retire unused terms.

    Returns how many values moved. Safe to run on several nodes at once: batches are
    transactions and the term locks keep retirement honest.
    """
    keyring = node.vault.keyring
    with node.write() as tx:
        moved = sealed.reencrypt_batch(tx.conn, tx.keyring, batch)
        if moved:
            return moved
        retired = sealed.retire_terms(tx.conn, keyring.active_term)
        for term in retired:
            tx.emit(
                AuditEvent(
                    Action.KEY_RETIRED,
                    actor="system",
                    subject=f"term:{term}",
                    details={"active_term": keyring.active_term},
                )
            )
    for term in retired:
        keyring.forget(term)
    if retired:
        log.info("retired key terms %s", retired)
    return 0


def reencrypt_all(
    node: Node, progress: Callable[[int, int], None] | None = None, batch: int = 200
) -> int:
    """Run :func:`reencrypt_step` to completion; ``progress(done, total)`` after each batch."""
    total = status(node).remaining
    done = 0
    while True:
        moved = reencrypt_step(node, batch)
        done += moved
        if progress:
            progress(done, max(total, done))
        if moved == 0:
            return done


__all__ = ["RekeyStatus", "reencrypt_all", "reencrypt_step", "rekey_status", "rotate_key", "status"]

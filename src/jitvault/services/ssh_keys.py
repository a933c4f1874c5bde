"""Users' SSH public keys: register, list, remove.

A registered key, with a live grant of its owner's, logs in to the SSH session proxy instead of
a session token (:func:`jitvault.services.sessions.open_session_with_key`). Everyone manages
their own keys; admins anyone's. Every change is audited (no audit, no change).
"""

from __future__ import annotations

from sqlalchemy import Connection

from jitvault.audit import Action, AuditEvent
from jitvault.crypto import normalize_fingerprint, parse_public_key
from jitvault.domain import (
    Permission,
    Principal,
    Sensitive,
    User,
    UserSshKey,
    authorize,
    validate_username,
)
from jitvault.errors import NotFound
from jitvault.services import session_ends
from jitvault.services.node import Node
from jitvault.storage import repositories as repo
from jitvault.storage import session_store
from jitvault.storage import ssh_keys as store

#: why a session opened with a key ends when the key is removed (what its client is told)
KEY_REMOVED_REASON = "ssh key removed"


def _owner(conn: Connection, actor: Principal, name: str, permission: Permission) -> User:
    """The user whose keys these are; another user's only with ``permission``."""
    norm = validate_username(name)
    if norm != actor.name:
        authorize(actor, permission)
    return repo.user_get(conn, norm)


def register_key(
    node: Node,
    actor: Principal,
    name: str,
    public_key: Sensitive[str],
    comment: str | None = None,
    source: str = "",
) -> UserSshKey:
    """Register an OpenSSH public key line for user ``name``.

    The text is held as Sensitive: it should be a public key, but whoever gives a private key
    by mistake must not find it in a log or an error (the parser refuses it without echoing).
    ``comment`` replaces the line's own comment.
    """
    key = parse_public_key(public_key.reveal(), comment)
    with node.write() as tx:
        owner = _owner(tx.conn, actor, name, Permission.SSH_KEY_MANAGE_ANY)
        added = store.key_add(
            tx.conn,
            owner.id,
            key.algorithm,
            key.fingerprint,
            key.line,
            key.comment,
            node.clock(),
        )
        tx.emit(
            AuditEvent(
                Action.SSH_KEY_ADDED,
                actor=actor.name,
                subject=f"user:{owner.name}",
                source=source,
                details={
                    "fingerprint": added.fingerprint,
                    "algorithm": added.algorithm,
                    "comment": added.comment,
                },
            )
        )
    return added


def list_keys(node: Node, actor: Principal, name: str) -> list[UserSshKey]:
    """User ``name``'s registered keys (one's own; admins and auditors anyone's)."""
    with node.read() as conn:
        owner = _owner(conn, actor, name, Permission.SSH_KEY_READ_ANY)
        return store.keys_of(conn, owner.id)


def remove_key(
    node: Node, actor: Principal, name: str, fingerprint: str, source: str = ""
) -> UserSshKey:
    """Remove user ``name``'s key with this fingerprint: it logs in no more, and the sessions
    open with it end in the same transaction (every node's proxy cuts them)."""
    wanted = normalize_fingerprint(fingerprint)
    with node.write() as tx:
        owner = _owner(tx.conn, actor, name, Permission.SSH_KEY_MANAGE_ANY)
        found = next((k for k in store.keys_of(tx.conn, owner.id) if k.fingerprint == wanted), None)
        if found is None:
            raise NotFound(
                f"user {owner.name!r} has no SSH key {wanted}",
                hint="see 'jitvault user key list'",
            )
        store.key_remove(tx.conn, found.id)
        cut = session_store.end_key_sessions(
            tx.conn, found.fingerprint, node.clock(), KEY_REMOVED_REASON
        )
        tx.emit(
            AuditEvent(
                Action.SSH_KEY_REMOVED,
                actor=actor.name,
                subject=f"user:{owner.name}",
                source=source,
                details={
                    "fingerprint": found.fingerprint,
                    "algorithm": found.algorithm,
                    "comment": found.comment,
                    "sessions_cut": cut,
                },
            )
        )
        session_ends.audit_ended(tx, cut, KEY_REMOVED_REASON, actor=actor.name)
    return found


__all__ = ["KEY_REMOVED_REASON", "list_keys", "register_key", "remove_key"]

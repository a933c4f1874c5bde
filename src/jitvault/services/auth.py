"""Who is calling: API token and password authentication, with lockout.

Failures are counted per source address and per user (NFKC case-folded name). Ten failures
within the lockout window lock that source or user for the lockout period (30 minutes by
default); while locked, even a correct credential is refused. Counters live in the database so
every node sees them.

A name typed at login is stored nowhere unless it is a user's: people type passwords into the
user field. The per-user counter is keyed by a digest of the name (so names that are no user's
lock out alike, and answers do not tell which names exist), and the audit log names the user
only when there is one, ``(unknown user)`` otherwise.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta

from jitvault.audit import Action, AuditEvent, Outcome
from jitvault.crypto import (
    API_TOKEN_PREFIX,
    DUMMY_PASSWORD_HASH,
    parse_token,
    secret_matches,
    verify_password,
)
from jitvault.domain import Principal, Sensitive, normalize_username, validate_username
from jitvault.errors import AuthError, JitvaultError, LockedOut, ValidationError
from jitvault.services.node import Node
from jitvault.services.users import issue_api_token
from jitvault.storage import repositories as repo

log = logging.getLogger(__name__)

_FAILED = "authentication failed"


#: who failed to log in, in the audit log, when the name given is no user's
UNKNOWN_USER = "(unknown user)"


def user_counter_key(username: str) -> str:
    """The failure counter of a name (a digest: the name may be a mistyped password)."""
    digest = hashlib.sha256(normalize_username(username).encode()).hexdigest()
    return f"user:{digest[:40]}"


def _keys(source: str, username: str | None) -> list[str]:
    keys = [f"src:{source}"]
    if username is not None:
        keys.append(user_counter_key(username))
    return keys


def _check_locked(node: Node, keys: list[str], now: datetime) -> None:
    with node.read() as conn:
        for key in keys:
            state = repo.auth_failure_state(conn, key)
            if state and state[2] is not None and state[2] > now:
                raise LockedOut(
                    "too many failed authentications; try again later",
                    hint=f"locked until {state[2].isoformat(timespec='seconds')}",
                )


def _record_failure(node: Node, keys: list[str], source: str, who: str, now: datetime) -> None:
    """Count a failure in its own transaction (it must stick although the request fails).
    ``who``: a user's name, or UNKNOWN_USER / "anonymous" (never a name that is no user's)."""
    cfg = node.settings.auth
    window = timedelta(seconds=cfg.lockout_seconds)
    locked: list[str] = []
    with node.db.begin() as conn:
        for key in keys:
            state = repo.auth_failure_state(conn, key)
            count, first = (state[0], state[1]) if state else (0, now)
            if now - first > window:
                count, first = 0, now
            count += 1
            until = now + window if count >= cfg.max_failures else None
            if until is not None:
                locked.append(key)
            repo.auth_failure_put(conn, key, count, first, until)
    # Auditing a refusal is best effort: the refusal itself stands either way.
    try:
        with node.write() as tx:
            tx.emit(
                AuditEvent(Action.AUTH_FAILED, actor=who, outcome=Outcome.DENIED, source=source)
            )
            for key in locked:
                tx.emit(
                    AuditEvent(
                        Action.AUTH_LOCKED_OUT,
                        actor=who,
                        subject=f"user:{who}" if key.startswith("user:") else key,
                        outcome=Outcome.DENIED,
                        source=source,
                    )
                )
    except JitvaultError:
        log.warning("authentication failure from %s could not be audited", source)


def authenticate_token(node: Node, token: Sensitive[str] | None, source: str) -> Principal:
    """Resolve an API token to its principal, or raise AuthError / LockedOut."""
    now = datetime.now(UTC)
    parsed = parse_token(token) if token else None
    found = None
    if parsed is not None and parsed[0] == API_TOKEN_PREFIX:
        with node.read() as conn:
            found = repo.token_lookup(conn, parsed[1])
    username = found[1].name if found else None
    keys = _keys(source, username)
    _check_locked(node, keys, now)
    if parsed is None or found is None:
        _record_failure(node, keys, source, username or "anonymous", now)
        raise AuthError(_FAILED, hint="check JITVAULT_TOKEN")
    secret_hash, principal, expires_at = found
    if not secret_matches(parsed[2], secret_hash) or (expires_at is not None and expires_at < now):
        _record_failure(node, keys, source, principal.name, now)
        raise AuthError(_FAILED, hint="check JITVAULT_TOKEN")
    return principal


def login(
    node: Node, username: str, password: Sensitive[str], source: str
) -> tuple[Principal, Sensitive[str]]:
    """Password login (for the web UI and scripts): returns a new 12-hour API token."""
    now = datetime.now(UTC)
    try:
        name: str | None = validate_username(username)
    except ValidationError:
        # no user can have this name (too long, NUL, ...): it is not looked up nor stored as a
        # counter key (the database may refuse it), but the source still counts the failure
        name = None
    keys = _keys(source, name)
    _check_locked(node, keys, now)
    found = None
    if name is not None:
        with node.read() as conn:
            found = repo.user_find(conn, name)
    stored = found[1] if found and found[1] else DUMMY_PASSWORD_HASH
    ok = verify_password(password, stored)  # always spend the argon2 time
    if not ok or found is None or found[1] is None or found[0].disabled:
        _record_failure(node, keys, source, found[0].name if found else UNKNOWN_USER, now)
        raise AuthError(_FAILED)
    user = found[0]
    principal = Principal(user.id, user.name, user.role, user.groups)
    token = issue_api_token(
        node,
        user,
        description="login",
        ttl=timedelta(hours=12),
        actor=user.name,
        source=source,
        action=Action.AUTH_LOGIN,
    )
    with node.db.begin() as conn:
        repo.auth_failure_clear(conn, keys[1])
    return principal, token


__all__ = ["UNKNOWN_USER", "authenticate_token", "login", "user_counter_key"]

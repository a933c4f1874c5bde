"""Bearer tokens (API, session, link) and user password hashing.

A token is ``<prefix>_<id>_<secret>``: ``id`` (64 bits, hex) finds the row, ``secret`` (256
bits, base64url) proves possession. Only SHA-256 of the secret is stored; comparison is
constant-time. User passwords are hashed with argon2id.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from jitvault.domain import Sensitive

TOKEN_SECRET_BYTES = 32
_TOKEN = re.compile(r"^(jv[a-z])_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")

API_TOKEN_PREFIX = "jvt"
SESSION_TOKEN_PREFIX = "jvs"
LINK_TOKEN_PREFIX = "jvl"


@dataclass(frozen=True)
class IssuedToken:
    token_id: str
    secret_hash: str
    token: Sensitive[str]


def issue_token(prefix: str = API_TOKEN_PREFIX) -> IssuedToken:
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(TOKEN_SECRET_BYTES)
    return IssuedToken(token_id, hash_secret(secret), Sensitive(f"{prefix}_{token_id}_{secret}"))


def parse_token(token: Sensitive[str]) -> tuple[str, str, Sensitive[str]] | None:
    """``(prefix, token_id, secret)`` or None if the token is not well formed."""
    m = _TOKEN.fullmatch(token.reveal())
    if m is None:
        return None
    return m.group(1), m.group(2), Sensitive(m.group(3))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: Sensitive[str], stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret.reveal()), stored_hash)


def generate_password(length: int = 32) -> Sensitive[str]:
    """A random password for target accounts (about 190 bits for 32 characters)."""
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789-_.~"
    return Sensitive("".join(secrets.choice(alphabet) for _ in range(length)))


_hasher = PasswordHasher()


def hash_password(password: Sensitive[str]) -> str:
    return _hasher.hash(password.reveal())


def verify_password(password: Sensitive[str], stored: str) -> bool:
    try:
        return _hasher.verify(stored, password.reveal())
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# a fixed argon2 hash used to spend the same time when the user does not exist. It is a literal
# (made once by ``_hasher.hash("jitvault-timing-equalizer")``) because hashing it at import cost
# every process, the CLI included, about 0.4 s of start-up. If argon2's default parameters change
# (``_hasher.check_needs_rehash(DUMMY_PASSWORD_HASH)`` turns true), regenerate it.
DUMMY_PASSWORD_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$ri2QeJ46B3POu5oJBCaUjg$"
    "ExCBaWFo0qJakagrnbt6vi2uDJmQigQ+1IznWexOAPk"
)


__all__ = [
    "API_TOKEN_PREFIX",
    "DUMMY_PASSWORD_HASH",
    "LINK_TOKEN_PREFIX",
    "SESSION_TOKEN_PREFIX",
    "TOKEN_SECRET_BYTES",
    "IssuedToken",
    "generate_password",
    "hash_password",
    "hash_secret",
    "issue_token",
    "parse_token",
    "secret_matches",
    "verify_password",
]

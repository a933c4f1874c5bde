"""SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL uses it. Stdlib only.

:func:`scram_verifier` computes the verifier PostgreSQL stores for a password, so that
``ALTER ROLE ... PASSWORD 'SCRAM-SHA-256$...'`` never sends the plaintext to the server (nor to
its statement log).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from jitvault.domain import Sensitive

DEFAULT_ITERATIONS = 4096  # PostgreSQL's scram_iterations default


def salted_password(password: Sensitive[str], salt: bytes, iterations: int) -> bytes:
    # Our generated passwords are printable ASCII, for which SASLprep is the identity.
    return hashlib.pbkdf2_hmac("sha256", password.reveal().encode(), salt, iterations)


def keys_from_salted(salted: bytes) -> tuple[bytes, bytes]:
    """``(StoredKey, ServerKey)`` from a SaltedPassword."""
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return stored_key, server_key


def scram_verifier(
    password: Sensitive[str], salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> Sensitive[str]:
    """``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (base64 parts)."""
    salt = salt if salt is not None else os.urandom(16)
    stored_key, server_key = keys_from_salted(salted_password(password, salt, iterations))
    b64 = base64.b64encode
    return Sensitive(
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


__all__ = ["DEFAULT_ITERATIONS", "keys_from_salted", "salted_password", "scram_verifier"]

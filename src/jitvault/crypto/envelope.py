"""AES-256-GCM envelopes bound to where they are stored.

A stored ciphertext is text: ``jv1:<term>:<base64url(nonce || ciphertext || tag)>``. The
additional authenticated data binds it to its table, row id, column and key term, so a ciphertext
copied to another row, another column or relabelled with another term fails to decrypt.
Nonces are 96 random bits from the OS for every encryption.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from jitvault.domain import Sensitive
from jitvault.errors import CryptoError

VERSION = "jv1"
NONCE_BYTES = 12
KEY_BYTES = 32


@dataclass(frozen=True)
class CipherContext:
    """Where a ciphertext lives: it can be opened only there."""

    table: str
    row_id: int | str
    column: str

    def aad(self, term: int) -> bytes:
        return f"jitvault|{VERSION}|{self.table}|{self.row_id}|{self.column}|{term}".encode()


def parse_term(envelope: str) -> int:
    """The key term an envelope was sealed under, without decrypting it."""
    try:
        version, term, _ = envelope.split(":", 2)
        # one spelling per term: int() would also take "+1", "01", " 1" or non-ASCII digits
        if version != VERSION or not (term.isascii() and term.isdigit()) or term != str(int(term)):
            raise ValueError(version)
        return int(term)
    except ValueError as exc:
        raise CryptoError("stored value is not a jitvault ciphertext (unknown format)") from exc


def cipher(key: Sensitive[bytes]) -> AESGCM:
    """The AES-GCM cipher of a data key (made once per key term and reused: building one costs
    more than sealing a short value with it)."""
    return AESGCM(key.reveal())


def seal(aead: AESGCM, term: int, plaintext: bytes, aad: bytes, nonce: bytes | None = None) -> str:
    """An envelope of ``plaintext`` under ``aead`` (the key of ``term``). ``nonce``: 12 bytes
    from the OS drawn for this encryption alone (by default, drawn here)."""
    if nonce is None:
        nonce = os.urandom(NONCE_BYTES)
    elif len(nonce) != NONCE_BYTES:
        raise CryptoError(f"a nonce is {NONCE_BYTES} bytes")
    ct = aead.encrypt(nonce, plaintext, aad)
    body = base64.urlsafe_b64encode(nonce + ct).decode().rstrip("=")
    return f"{VERSION}:{term}:{body}"


def open_(aead: AESGCM, envelope: str, aad: bytes) -> bytes:
    try:
        _, _, body = envelope.split(":", 2)
        # strict: the default decoder skips characters outside the alphabet and trailing data
        raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
    except ValueError as exc:
        raise CryptoError("stored value is not a jitvault ciphertext (bad encoding)") from exc
    if len(raw) < NONCE_BYTES + 16:
        raise CryptoError("stored ciphertext is truncated")
    try:
        return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad)
    except InvalidTag as exc:
        raise CryptoError(
            "ciphertext failed authentication (wrong key, tampered, or moved from another row)"
        ) from exc


def wrap_raw(key: Sensitive[bytes], plaintext: bytes, aad: bytes) -> bytes:
    """Binary AES-GCM for key wrapping: nonce || ciphertext || tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key.reveal()).encrypt(nonce, plaintext, aad)


def unwrap_raw(key: Sensitive[bytes], blob: bytes, aad: bytes) -> bytes:
    if len(blob) < NONCE_BYTES + 16:
        raise CryptoError("wrapped key is truncated")
    try:
        return AESGCM(key.reveal()).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag as exc:
        raise CryptoError("wrapped key failed authentication (wrong root key?)") from exc


def new_key() -> Sensitive[bytes]:
    return Sensitive(os.urandom(KEY_BYTES))


__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "VERSION",
    "CipherContext",
    "cipher",
    "new_key",
    "open_",
    "parse_term",
    "seal",
    "unwrap_raw",
    "wrap_raw",
]

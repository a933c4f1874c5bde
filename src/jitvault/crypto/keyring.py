"""The keyring: versioned data keys ("terms"), each wrapped by the root key provider.

The newest term encrypts; every term still held decrypts. Rotation adds a term, re-encrypts
every stored value under it (a background job) and only then retires the old terms.
A separate MAC key (its own wrapped entry) keys the audit chain.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from jitvault.crypto.envelope import NONCE_BYTES, CipherContext, cipher, open_, parse_term, seal
from jitvault.domain import Sensitive
from jitvault.errors import CryptoError

PURPOSE_DATA = "data"
PURPOSE_AUDIT = "audit"


def wrap_aad(term: int, purpose: str) -> bytes:
    """AAD for a wrapped keyring entry, so an entry cannot be relabelled."""
    return f"jitvault|keyring|{purpose}|{term}".encode()


@dataclass(frozen=True)
class KeyringEntry:
    term: int
    purpose: str
    key: Sensitive[bytes]


class Keyring:
    """Unwrapped data keys in memory, by term (each with its cipher, made once). Thread-safe."""

    def __init__(self, entries: list[KeyringEntry]) -> None:
        self._lock = threading.Lock()
        self._data: dict[int, Sensitive[bytes]] = {}
        self._ciphers: dict[int, AESGCM] = {}
        self._audit: Sensitive[bytes] | None = None
        for e in entries:
            self.add(e)

    def add(self, entry: KeyringEntry) -> None:
        with self._lock:
            if entry.purpose == PURPOSE_AUDIT:
                self._audit = entry.key
            else:
                self._data[entry.term] = entry.key
                self._ciphers[entry.term] = cipher(entry.key)

    def forget(self, term: int) -> None:
        with self._lock:
            self._data.pop(term, None)
            self._ciphers.pop(term, None)

    @property
    def active_term(self) -> int:
        with self._lock:
            if not self._data:
                raise CryptoError("the keyring holds no data key", hint="run 'jitvault init'")
            return max(self._data)

    @property
    def terms(self) -> list[int]:
        with self._lock:
            return sorted(self._data)

    def _active(self) -> tuple[int, AESGCM]:
        with self._lock:
            if not self._ciphers:
                raise CryptoError("the keyring holds no data key", hint="run 'jitvault init'")
            term = max(self._ciphers)
            return term, self._ciphers[term]

    def encrypt(self, plaintext: Sensitive[bytes], ctx: CipherContext) -> str:
        term, aead = self._active()
        return seal(aead, term, plaintext.reveal(), ctx.aad(term))

    def encrypt_many(
        self, values: Sequence[tuple[CipherContext, Sensitive[bytes]]]
    ) -> tuple[int, list[str]]:
        """Seal a batch under the active term: the term and one envelope per value, each bound
        to its own place, each with its own random nonce (drawn from the OS in one call)."""
        term, aead = self._active()
        nonces = os.urandom(NONCE_BYTES * len(values))
        return term, [
            seal(aead, term, value.reveal(), ctx.aad(term), nonces[i : i + NONCE_BYTES])
            for i, (ctx, value) in zip(range(0, len(nonces), NONCE_BYTES), values, strict=True)
        ]

    def decrypt(self, envelope: str, ctx: CipherContext) -> Sensitive[bytes]:
        term = parse_term(envelope)
        with self._lock:
            aead = self._ciphers.get(term)
        if aead is None:
            raise CryptoError(
                f"no key for term {term} in the keyring",
                hint="the value was sealed under a retired or unknown key term",
            )
        return Sensitive(open_(aead, envelope, ctx.aad(term)))

    def audit_key(self) -> Sensitive[bytes]:
        with self._lock:
            if self._audit is None:
                raise CryptoError("the keyring holds no audit key", hint="run 'jitvault init'")
            # Derived so that the stored key is never used directly as an HMAC key.
            base = self._audit
        return Sensitive(
            HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None, info=b"jitvault audit chain v1"
            ).derive(base.reveal())
        )


def chain_mac(key: Sensitive[bytes], data: bytes) -> str:
    """HMAC-SHA256 hex digest, used for the audit hash chain."""
    return hmac.new(key.reveal(), data, hashlib.sha256).hexdigest()


__all__ = [
    "PURPOSE_AUDIT",
    "PURPOSE_DATA",
    "Keyring",
    "KeyringEntry",
    "chain_mac",
    "wrap_aad",
]

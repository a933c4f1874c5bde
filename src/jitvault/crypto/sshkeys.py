"""SSH private keys the core generates for target accounts (the plugin only installs them).

Keys are Ed25519 in OpenSSH format without a passphrase: the vault's envelope encryption is
what protects them at rest, and the session proxy must be able to use them unattended.
"""

from __future__ import annotations

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jitvault.crypto.tokens import generate_password
from jitvault.domain import SecretKind, Sensitive

#: what every PEM or OpenSSH private key block contains (and no password should)
PRIVATE_KEY_MARKER = "PRIVATE KEY-----"


def generate_ssh_private_key() -> Sensitive[str]:
    """A new Ed25519 private key, OpenSSH format, unencrypted."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return Sensitive(pem.decode("ascii"))


def generate_secret(kind: SecretKind) -> Sensitive[str]:
    """A new secret of ``kind`` (what the target plugin says the account needs)."""
    if kind == SecretKind.SSH_KEY:
        return generate_ssh_private_key()
    return generate_password()


def looks_like_private_key(secret: Sensitive[str]) -> bool:
    return PRIVATE_KEY_MARKER in secret.reveal()


def is_usable_private_key(secret: Sensitive[str]) -> bool:
    """Can this private key be used unattended (it parses and has no passphrase)?"""
    data = secret.reveal().encode()
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            serialization.load_ssh_private_key(data, password=None)
        else:
            serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


__all__ = [
    "PRIVATE_KEY_MARKER",
    "generate_secret",
    "generate_ssh_private_key",
    "is_usable_private_key",
    "looks_like_private_key",
]

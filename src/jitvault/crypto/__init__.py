"""All cryptography of jitvault. The only package that imports ``cryptography``."""

from jitvault.crypto.envelope import CipherContext, new_key, parse_term
from jitvault.crypto.keyring import (
    PURPOSE_AUDIT,
    PURPOSE_DATA,
    Keyring,
    KeyringEntry,
    chain_mac,
    wrap_aad,
)
from jitvault.crypto.providers import (
    LocalRootKey,
    RootKeyProvider,
    TransitRootKey,
    create_key_file,
    load_key_file,
)
from jitvault.crypto.shamir import combine as combine_shares
from jitvault.crypto.shamir import parse_share
from jitvault.crypto.shamir import split as split_secret
from jitvault.crypto.ssh_public_keys import (
    SshPublicKey,
    normalize_fingerprint,
    parse_public_key,
    ssh_fingerprint,
)
from jitvault.crypto.sshkeys import (
    generate_secret,
    generate_ssh_private_key,
    is_usable_private_key,
    looks_like_private_key,
)
from jitvault.crypto.tls import ensure_self_signed, server_context
from jitvault.crypto.tokens import (
    API_TOKEN_PREFIX,
    DUMMY_PASSWORD_HASH,
    LINK_TOKEN_PREFIX,
    SESSION_TOKEN_PREFIX,
    IssuedToken,
    generate_password,
    hash_password,
    hash_secret,
    issue_token,
    parse_token,
    secret_matches,
    verify_password,
)

__all__ = [
    "API_TOKEN_PREFIX",
    "DUMMY_PASSWORD_HASH",
    "LINK_TOKEN_PREFIX",
    "PURPOSE_AUDIT",
    "PURPOSE_DATA",
    "SESSION_TOKEN_PREFIX",
    "CipherContext",
    "IssuedToken",
    "Keyring",
    "KeyringEntry",
    "LocalRootKey",
    "RootKeyProvider",
    "SshPublicKey",
    "TransitRootKey",
    "chain_mac",
    "combine_shares",
    "create_key_file",
    "ensure_self_signed",
    "generate_password",
    "generate_secret",
    "generate_ssh_private_key",
    "hash_password",
    "hash_secret",
    "is_usable_private_key",
    "issue_token",
    "load_key_file",
    "looks_like_private_key",
    "new_key",
    "normalize_fingerprint",
    "parse_public_key",
    "parse_share",
    "parse_term",
    "parse_token",
    "secret_matches",
    "server_context",
    "split_secret",
    "ssh_fingerprint",
    "verify_password",
    "wrap_aad",
]

"""Root key providers: what wraps the keyring's data keys.

- ``file``: a 32-byte root key in a local file of mode 0600 (the embedded default).
- ``shamir``: the root key exists only in memory, recombined from unseal shares.
- ``transit``: the root key never leaves OpenBao / HashiCorp Vault Transit; data keys are
  wrapped and unwrapped by it through hvac (auto-unseal).

No provider ever falls back to plaintext: no key, no start.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any, Protocol

from jitvault.crypto.envelope import KEY_BYTES, new_key, unwrap_raw, wrap_raw
from jitvault.domain import Sensitive
from jitvault.errors import ConfigError, CryptoError, KeyProviderError


class RootKeyProvider(Protocol):
    """Wraps and unwraps keyring entries. ``aad`` binds a wrapped entry to its term/purpose."""

    name: str

    def wrap(self, plaintext: Sensitive[bytes], aad: bytes) -> bytes: ...

    def unwrap(self, blob: bytes, aad: bytes) -> Sensitive[bytes]: ...


class LocalRootKey:
    """A root key held in memory (from a key file or recombined Shamir shares)."""

    def __init__(self, root_key: Sensitive[bytes], name: str = "file") -> None:
        if len(root_key.reveal()) != KEY_BYTES:
            raise KeyProviderError("root key has the wrong length", hint="expected 32 bytes")
        self._key = root_key
        self.name = name

    def wrap(self, plaintext: Sensitive[bytes], aad: bytes) -> bytes:
        return wrap_raw(self._key, plaintext.reveal(), aad)

    def unwrap(self, blob: bytes, aad: bytes) -> Sensitive[bytes]:
        return Sensitive(unwrap_raw(self._key, blob, aad))


# --- key file ----------------------------------------------------------------------------------

_KEY_FILE_HEADER = "jitvault-root-key-v1\n"


def create_key_file(path: Path) -> Sensitive[bytes]:
    """Create a new root key file with mode 0600; refuse to overwrite an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = new_key()
    data = _KEY_FILE_HEADER + base64.b64encode(key.reveal()).decode() + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigError(
            f"root key file {path} already exists", hint="refusing to overwrite a root key"
        ) from exc
    with os.fdopen(fd, "w") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return key


def load_key_file(path: Path) -> Sensitive[bytes]:
    """Read a root key file, refusing one that others can read."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise KeyProviderError(
            f"root key file {path} does not exist",
            hint="restore it from backup; without it the vault cannot be opened",
        ) from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyProviderError(
            f"root key file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"run: chmod 600 {path}",
        )
    text = path.read_text(encoding="ascii")
    if not text.startswith(_KEY_FILE_HEADER):
        raise KeyProviderError(f"{path} is not a jitvault root key file")
    try:
        raw = base64.b64decode(text[len(_KEY_FILE_HEADER) :].strip(), validate=True)
    except ValueError as exc:
        raise KeyProviderError(f"root key file {path} is corrupt") from exc
    if len(raw) != KEY_BYTES:
        raise KeyProviderError(f"root key file {path} is corrupt (wrong length)")
    return Sensitive(raw)


# --- OpenBao / Vault Transit ---------------------------------------------------------------------


class TransitRootKey:
    """Data keys wrapped by a Transit key; the AAD is bound inside the wrapped plaintext."""

    name = "transit"

    def __init__(self, client: Any, mount: str, key_name: str) -> None:
        self._client = client
        self._mount = mount
        self._key_name = key_name

    @classmethod
    def connect(
        cls, addr: str, token: Sensitive[str], mount: str, key_name: str, ca_cert: str | None
    ) -> TransitRootKey:
        import hvac  # local: only deployments using Transit pay for the import

        client = hvac.Client(url=addr, token=token.reveal(), verify=ca_cert or True, timeout=10)
        return cls(client, mount, key_name)

    def ensure_key(self) -> None:
        """Create the Transit key if it does not exist (needs create rights; done at init)."""
        import hvac.exceptions

        try:
            self._client.secrets.transit.read_key(name=self._key_name, mount_point=self._mount)
        except hvac.exceptions.InvalidPath:  # only "no such key" leads to creating it
            try:
                self._client.secrets.transit.create_key(
                    name=self._key_name, key_type="aes256-gcm96", mount_point=self._mount
                )
            except Exception as exc:
                raise KeyProviderError(
                    f"cannot create Transit key {self._key_name!r} at mount {self._mount!r}: "
                    f"{type(exc).__name__}",
                    hint="enable the transit engine and grant create/read on the key",
                ) from None
        except Exception as exc:
            raise KeyProviderError(
                f"cannot read Transit key {self._key_name!r} at mount {self._mount!r}: "
                f"{type(exc).__name__}",
                hint="check the Transit address, token and policy",
            ) from None

    def wrap(self, plaintext: Sensitive[bytes], aad: bytes) -> bytes:
        payload = len(aad).to_bytes(2, "big") + aad + plaintext.reveal()
        try:
            resp = self._client.secrets.transit.encrypt_data(
                name=self._key_name,
                plaintext=base64.b64encode(payload).decode(),
                mount_point=self._mount,
            )
        except Exception as exc:
            raise KeyProviderError(
                f"Transit encrypt failed: {type(exc).__name__}",
                hint="check the Transit address, token and key policy",
            ) from None
        return str(resp["data"]["ciphertext"]).encode()

    def unwrap(self, blob: bytes, aad: bytes) -> Sensitive[bytes]:
        try:
            resp = self._client.secrets.transit.decrypt_data(
                name=self._key_name, ciphertext=blob.decode(), mount_point=self._mount
            )
        except Exception as exc:
            raise KeyProviderError(
                f"Transit decrypt failed: {type(exc).__name__}",
                hint="check the Transit address, token and key policy",
            ) from None
        payload = base64.b64decode(resp["data"]["plaintext"])
        n = int.from_bytes(payload[:2], "big")
        if payload[2 : 2 + n] != aad:
            raise CryptoError("Transit-wrapped key is bound to another keyring entry")
        return Sensitive(payload[2 + n :])


__all__ = [
    "LocalRootKey",
    "RootKeyProvider",
    "TransitRootKey",
    "create_key_file",
    "load_key_file",
]

"""Two things asyncssh does for every packet that an AEAD cipher does not need.

The proxy relays every byte twice (decrypt from one side, encrypt to the other), so what asyncssh
spends per packet is what bounds a session's throughput. With the AEAD ciphers that OpenSSH
clients and servers negotiate (``chacha20-poly1305@openssh.com``, ``aes*-gcm@openssh.com``), two
of its costs buy nothing:

- **An empty ``SSH_MSG_IGNORE`` before every packet.** This is RFC 4251 section 9.3.1's
  countermeasure to the attack on CBC mode's predictable IV (the IV of a packet is the last
  block of the one before). An AEAD cipher takes a fresh nonce from the sequence number for every
  packet, so there is nothing to mask; OpenSSH sends no such packets. Each one costs a second
  encryption, a second write and a sequence number: it doubles the packets the proxy sends.
  With any other cipher (CBC, CTR with a MAC) asyncssh's behaviour is kept as it is.
- **A new AES-GCM object per packet** (its key schedule each time). The object is made once per
  direction and key, and lives exactly as long as asyncssh's own cipher object (a new key
  exchange makes new ones).

Both are changes to asyncssh's internals, so :func:`install` checks the shapes it relies on and
changes nothing (with a warning) if a release of asyncssh no longer has them: the proxy then
works as before, only slower. ``tests/unit/test_ssh_aead.py`` shows both changes in place
and the wire still talking to OpenSSH.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

_installed = False


def install() -> bool:
    """Apply both changes to asyncssh (once per process); True if they are in place."""
    global _installed
    if _installed:
        return True
    try:
        from asyncssh import connection, encryption
        from asyncssh.crypto import cipher
    except ImportError:  # pragma: no cover: asyncssh is a dependency of this plugin
        return False
    needed = (
        (connection, "SSHConnection"),
        (connection, "MSG_IGNORE"),
        (encryption, "GCMEncryption"),
        (encryption, "ChachaEncryption"),
        (cipher, "GCMCipher"),
        (cipher, "AESGCM"),
        (cipher, "InvalidTag"),
    )
    missing = [name for module, name in needed if not hasattr(module, name)]
    gcm = getattr(cipher, "GCMCipher", None)
    if gcm is not None and not {"_key", "_iv", "_update_iv"} <= _names(gcm):
        missing.append("GCMCipher._key/_iv/_update_iv")
    if missing:
        log.warning(
            "ssh proxy: asyncssh has changed (%s missing): its per-packet costs stay as they are",
            ", ".join(missing),
        )
        return False
    _skip_ignore_packets_under_aead(
        connection, (encryption.GCMEncryption, encryption.ChachaEncryption)
    )
    _one_gcm_object_per_key(cipher)
    _installed = True
    return True


def _names(cls: type) -> set[str]:
    """The attribute names a class's methods use on ``self`` (read from its code objects)."""
    names: set[str] = set()
    for value in vars(cls).values():
        code = getattr(value, "__code__", None)
        if code is not None:
            names.update(code.co_names)
    return names | set(vars(cls))


def _skip_ignore_packets_under_aead(connection: Any, aead: tuple[type, ...]) -> None:
    conn_class = connection.SSHConnection
    send_packet = conn_class.send_packet
    msg_ignore = connection.MSG_IGNORE
    empty = b"\x00\x00\x00\x00"  # String(b"")

    def send_packet_without_cbc_masking(
        self: Any, pkttype: int, *args: bytes, handler: Any = None
    ) -> None:
        # asyncssh calls this for its masking packet just before the real one: drop exactly
        # that packet (type IGNORE, one empty string) when the cipher is an AEAD
        if pkttype == msg_ignore and args == (empty,) and isinstance(self._send_encryption, aead):
            return
        send_packet(self, pkttype, *args, handler=handler)

    conn_class.send_packet = send_packet_without_cbc_masking


def _one_gcm_object_per_key(cipher: Any) -> None:
    gcm_class = cipher.GCMCipher
    aesgcm = cipher.AESGCM
    invalid_tag = cipher.InvalidTag
    mac_size = 16

    def _aead(self: Any) -> Any:
        made = self.__dict__.get("_jv_aead")
        if made is None or made[0] is not self._key:
            made = self._jv_aead = (self._key, aesgcm(self._key))
        return made[1]

    def encrypt_and_sign(self: Any, header: bytes, data: bytes) -> tuple[bytes, bytes]:
        sealed = _aead(self).encrypt(self._iv, data, header)
        self._update_iv()
        return header + sealed[:-mac_size], sealed[-mac_size:]

    def verify_and_decrypt(self: Any, header: bytes, data: bytes, mac: bytes) -> bytes | None:
        try:
            opened: bytes | None = _aead(self).decrypt(self._iv, data + mac, header)
        except invalid_tag:
            opened = None
        self._update_iv()
        return opened

    gcm_class.encrypt_and_sign = encrypt_and_sign
    gcm_class.verify_and_decrypt = verify_and_decrypt


__all__ = ["install"]

"""``jitvault_ssh.aead``: under an AEAD cipher asyncssh sends no masking packet before each
packet and keeps one AES-GCM object per key; other ciphers keep asyncssh's behaviour; the bytes
arrive intact, across key re-exchanges too. In-process asyncssh on loopback (the proxy's own
tests run OpenSSH clients and an OpenSSH server through the same code)."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from typing import Any

import asyncssh
import pytest
from asyncssh import connection

from jitvault_ssh import aead

CHUNKS = 200
CHUNK = secrets.token_bytes(1000)


@pytest.fixture
def packets(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every packet written by any asyncssh connection in this process, by side."""
    assert aead.install(), "asyncssh changed: jitvault_ssh.aead no longer applies"
    seen: Counter[str] = Counter()
    write = connection.SSHConnection._send

    def counting(self: Any, data: bytes) -> None:
        seen["server" if self.is_server() else "client"] += 1
        write(self, data)

    monkeypatch.setattr(connection.SSHConnection, "_send", counting)
    return seen


class _Server(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return password == "pw"


async def _stream(process: asyncssh.SSHServerProcess[bytes]) -> None:
    received = await process.stdin.read()  # what the client sent, back with the chunks
    for _ in range(CHUNKS):
        process.stdout.write(CHUNK)
        await process.stdout.drain()
    process.stdout.write(received)
    process.exit(0)


async def _run(cipher: str, rekey_bytes: int | None = None) -> bytes:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        _Server,
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        process_factory=_stream,
        encoding=None,
        config=[],
    )
    port = server.sockets[0].getsockname()[1]
    options: dict[str, Any] = {"rekey_bytes": rekey_bytes} if rekey_bytes else {}
    try:
        async with asyncssh.connect(
            "127.0.0.1",
            port,
            username="u",
            password="pw",
            known_hosts=None,
            encryption_algs=[cipher],
            config=[],
            client_keys=[],
            **options,
        ) as conn:
            done = await conn.run("stream", input=b"sent-by-the-client", encoding=None, check=True)
            out = done.stdout
            assert isinstance(out, bytes)
            return out
    finally:
        server.close()
        await server.wait_closed()


AEAD = ["chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]


@pytest.mark.parametrize("cipher", AEAD)
def test_an_aead_cipher_sends_one_packet_per_message_not_two(
    cipher: str, packets: Counter[str]
) -> None:
    out = asyncio.run(_run(cipher))
    assert out == CHUNK * CHUNKS + b"sent-by-the-client"
    # the chunks, plus the handshake, auth and channel set-up (a few dozen): not twice as many
    assert CHUNKS <= packets["server"] < CHUNKS + 60, packets


def test_a_cipher_that_is_not_aead_keeps_the_masking_packets(packets: Counter[str]) -> None:
    out = asyncio.run(_run("aes128-ctr"))
    assert out == CHUNK * CHUNKS + b"sent-by-the-client"
    assert packets["server"] >= 2 * CHUNKS, packets


@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"])
def test_bytes_arrive_intact_across_key_re_exchanges(cipher: str, packets: Counter[str]) -> None:
    # a new key every 20 kB: the reused AES-GCM object must follow every new key
    out = asyncio.run(_run(cipher, rekey_bytes=20_000))
    assert out == CHUNK * CHUNKS + b"sent-by-the-client"


def test_install_is_idempotent() -> None:
    assert aead.install()
    first = connection.SSHConnection.send_packet
    assert aead.install()
    assert connection.SSHConnection.send_packet is first

"""The native relay's TLS sides: a TLS connection made and handshaken by Python's ``ssl`` module
(with the proxy's own server context), handed to the engine, which drives it from then on.

Driven through loopback sockets, without PostgreSQL: the client is a real ``ssl.SSLSocket``,
the backend a plain socket. What must hold: records that came with the login and that Python
had not read yet are relayed; the client's bytes reach the backend decrypted and the backend's
reach the client encrypted; a cut's last message arrives whole, followed by a close_notify (a
client that refuses ragged EOFs sees a clean end); a forged record ends the session as a broken
connection and forwards nothing; only connections the engine can check are taken.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jitvault.crypto.tls import ensure_self_signed, server_context
from jitvault_postgres import native
from jitvault_postgres import protocol as pg
from tests.unit.test_pg_native_engine import Harness, _pair

try:
    from jitvault_postgres import _relay
except ImportError:  # test_pg_native_framer fails on a missing build
    _relay = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(_relay is None, reason="the native relay is not built")

READY = b"Z" + struct.pack("!i", 5) + b"I"


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes from ``sock`` (bounded: 10 s)."""
    sock.settimeout(10)
    got = b""
    for _ in range(10_000):
        if len(got) >= size:
            break
        chunk = sock.recv(size - len(got))
        assert chunk, f"the connection ended after {len(got)} of {size} bytes"
        got += chunk
    return got


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The proxy's server context (a self-signed certificate, as ``jitvault init`` makes) and a
    client's (sslmode=require: no certificate check)."""
    where: Path = tmp_path_factory.mktemp("tls")
    ensure_self_signed(where / "cert.pem", where / "key.pem", ["127.0.0.1"])
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return server_context(where / "cert.pem", where / "key.pem"), client


class TlsSession(Harness):
    """A client logged in over TLS, as the front end leaves it when it hands the session over:
    ``server`` is the proxy's ssl.SSLObject (its records arrive through ``incoming``), ``client``
    the user's end, ``backend`` the target's; the engine relays both once :meth:`hand_over`
    (and is read and stopped as the plain sessions' :class:`Harness` is)."""

    def __init__(self, contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
        # not the Harness's: no plain session is handed over
        assert _relay is not None
        self.engine = _relay.Engine()
        self.proxy_client, user = _pair()
        self.backend, self.proxy_server = _pair()
        self.incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.server = contexts[0].wrap_bio(self.incoming, outgoing, server_side=True)
        made: list[ssl.SSLSocket] = []
        hello = threading.Thread(
            target=lambda: made.append(contexts[1].wrap_socket(user, suppress_ragged_eofs=False))
        )
        hello.start()
        self.proxy_client.settimeout(10)
        for _ in range(100):  # bounded: a handshake is a few flights
            try:
                self.server.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            if outgoing.pending:
                self.proxy_client.sendall(outgoing.read())
            if done:
                break
            self.incoming.write(self.proxy_client.recv(65536))
        hello.join(10)
        assert made, "the TLS handshake did not complete"
        self.client = made[0]
        self.events = []

    def read_unrelayed(self, size: int) -> None:
        """Records the client sent that Python reads off the socket and does not decrypt (as
        when they arrive together with the login's last message)."""
        got = 0
        for _ in range(100):  # bounded: 10 s
            if got >= size:
                break
            ready, _, _ = select.select([self.proxy_client], [], [], 0.1)
            if ready:
                chunk = self.proxy_client.recv(65536)
                self.incoming.write(chunk)
                got += len(chunk)

    def hand_over(self) -> None:
        assert _relay is not None
        assert _relay.tls_supported(self.server._sslobj)  # type: ignore[attr-defined]
        self.engine.add(
            1,
            self.proxy_client.detach(),
            self.proxy_server.detach(),
            b"",
            b"",
            0,
            0,
            self.server._sslobj,  # type: ignore[attr-defined]
            None,
        )

    def close(self) -> None:
        super().close()
        # a session never handed over still holds the proxy's ends (detached ones: no-ops)
        self.proxy_client.close()
        self.proxy_server.close()


@pytest.fixture
def session(contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> Iterator[TlsSession]:
    s = TlsSession(contexts)
    yield s
    s.close()


def test_a_tls_client_is_relayed_both_ways_and_records_read_before_the_hand_over_go_first(
    session: TlsSession,
) -> None:
    first, second = pg.query("SELECT 'sent with the login'"), pg.query("SELECT 'after'")
    session.client.sendall(first)
    session.read_unrelayed(len(first) + 22)  # one TLS 1.3 record: 5 + 1 + 16 bytes around it
    session.hand_over()
    assert _recv_exactly(session.backend, len(first)) == first
    session.client.sendall(second)
    assert _recv_exactly(session.backend, len(second)) == second
    # the backend's answer, larger than a TLS record (16 KiB), reaches the client decrypted
    row = b"D" + struct.pack("!ihi", 4 + 2 + 4 + 100_000, 1, 100_000) + b"r" * 100_000
    session.backend.sendall(row + READY)
    assert _recv_exactly(session.client, len(row) + len(READY)) == row + READY
    statements = [e for e in session.take("q") if e[0] == "q"]
    assert b"sent with the login" in b"".join(e[3] for e in statements)  # type: ignore[misc]


def test_a_cut_sends_its_last_message_then_a_close_notify(session: TlsSession) -> None:
    session.hand_over()
    fatal = pg.grant_expired_error("terminating connection: access grant expired", "")
    session.engine.close(1, fatal, pg.terminate(), 1.0)
    assert _recv_exactly(session.client, len(fatal)) == fatal
    # a clean TLS end: with ragged EOFs refused, a close without close_notify would raise
    assert session.client.recv(1) == b""
    assert _recv_exactly(session.backend, len(pg.terminate())) == pg.terminate()
    session.take("c")


def test_a_forged_record_ends_the_session_as_a_broken_connection(session: TlsSession) -> None:
    session.hand_over()
    forged = pg.query("SELECT 'never'")
    # an application-data record the client's keys did not seal: its tag cannot check out
    os.write(session.client.fileno(), b"\x17\x03\x03" + struct.pack("!H", 40) + b"\x00" * 40)
    assert session.end_reason() == "client connection lost"
    session.backend.settimeout(0.5)
    with pytest.raises(TimeoutError):
        session.backend.recv(len(forged))


def test_only_handshaken_connections_of_pythons_ssl_are_taken(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    assert _relay is not None
    fresh = contexts[0].wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    assert not _relay.tls_supported(fresh._sslobj)  # type: ignore[attr-defined]
    assert not _relay.tls_supported(object())
    assert native.tls_connections((None, None)) == (None, None)
    assert native.tls_connections((fresh, None)) is None
    assert native.tls_connections((None, fresh)) is None
    engine = _relay.Engine()
    try:
        a, b = socket.socketpair()
        with pytest.raises(ValueError, match="cannot take this TLS connection"):
            engine.add(1, a.fileno(), b.fileno(), b"", b"", 0, 0, fresh._sslobj, None)  # type: ignore[attr-defined]
        a.close()
        b.close()
    finally:
        engine.stop()


def test_a_session_is_taken_with_its_tls_sides_unless_one_cannot_be_or_tls_is_turned_off(
    session: TlsSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    handshaken = session.server
    connection = handshaken._sslobj  # type: ignore[attr-defined]
    assert native.tls_connections((handshaken, None)) == (connection, None)
    assert native.tls_connections((None, handshaken)) == (None, connection)
    monkeypatch.setenv("JITVAULT_PG_NATIVE_TLS", "0")
    assert native.tls_connections((handshaken, None)) is None
    assert native.tls_connections((None, None)) == (None, None)  # plain sessions stay native

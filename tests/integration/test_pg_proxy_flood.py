"""Work that clients cause before they log in cannot hold back the cuts, the recordings, or
the logins of other addresses.

Each login attempt (and each cancel request) looks its token up in the store, in the proxy
loop's shared thread pool. Against a slow store (here: the token table locked, so every lookup
waits), a flood of them from one address takes at most ``server.proxy_preauth_per_source``
threads of that pool, so a login from elsewhere still gets its lookup to the store. A flood
from many addresses fills the pool; the session watcher and the recording writer have threads
of their own: meanwhile a live session's statements are still written, and a revoke still
cuts it within the bound. The floods are logins of our own client, each from its own loopback
address (127.0.0.0/8), stopped where the proxy looks the token up.

The TLS handshakes of clients that have proven nothing run on the proxy's loop, the one that
cuts sessions: a flood of them from one address (each a ClientHello the proxy answers with its
key exchange and signature, then gone) gets at most that address's places among the
connections logging in (``server.proxy_max_startups_per_source``; the rest are refused at
once) and still lets a revoke cut a live session within the bound.

Always on PostgreSQL (a table lock that readers wait for), whatever ``--db`` says.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import ssl
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jitvault.config import ServerSettings
from jitvault.domain import Sensitive
from jitvault.plugin_api.scram import MECHANISM, ScramClient
from jitvault_postgres import protocol as pg
from tests.integration.test_pg_proxy import (
    CUT_BOUND_SECONDS,
    TARGET,
    ProxyWorld,
    _access,
    _connect_info,
    _psycopg,
    proxy_world,
)
from tests.integration.test_ssh_reuse_port import _postgres_available
from tests.pgcluster import PgCluster

#: login attempts waiting on the store at once (the shared pool has min(32, CPUs + 4) threads)
FLOOD = 40
PER_SOURCE = ServerSettings.model_fields["proxy_preauth_per_source"].default


@pytest.fixture
def world(tmp_path: Path, pg_cluster: PgCluster) -> Iterator[ProxyWorld]:
    if not _postgres_available():
        pytest.skip("needs the tests' PostgreSQL (JITVAULT_TEST_PG)")
    policy = (
        f"rules:\n  - name: flood\n    match: {{targets: [{TARGET}]}}\n    auto_approve: true\n"
    )
    with proxy_world("postgres", tmp_path, pg_cluster, policy) as w:
        yield w


def _store(world: ProxyWorld) -> str:
    url = str(tomllib.loads(world.config.read_text())["database_url"])
    return url.replace("postgresql+psycopg://", "postgresql://")


def _recorded_rows(store: str, session_id: int) -> int:
    with psycopg.connect(store, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM session_events WHERE session_id = %s", [session_id]
        ).fetchone()
    assert row is not None
    return int(row[0])


def _waiting_lookups(store: str) -> int:
    with psycopg.connect(store, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks"
            " WHERE NOT granted AND relation = 'session_tokens'::regclass"
        ).fetchone()
    assert row is not None
    return int(row[0])


@contextlib.contextmanager
def _unproven_logins(port: int, role: str, sources: list[str]) -> Iterator[None]:
    """One login from each of ``sources`` (an address may repeat) with a made-up token id,
    left where the proxy looks the token up: SCRAM's first message sent. Closed on exit."""
    socks: list[socket.socket] = []
    try:
        for source in sources:
            s = socket.socket()
            socks.append(s)
            s.settimeout(10)
            s.bind((source, 0))
            s.connect(("127.0.0.1", port))
            user = f"{role}.{secrets.token_hex(8)}"
            s.sendall(pg.startup_message({"user": user, "database": "postgres"}))
            reader = pg.BackendReader()
            got: list[pg.Message] = []
            while not any(isinstance(m, pg.AuthenticationSASL) for m in got):
                data = s.recv(4096)
                assert data, "the proxy closed a login before asking for SCRAM"
                got += reader.feed(data)
            first = ScramClient(Sensitive("jvs_x_y")).first_message()
            s.sendall(pg.sasl_initial_response(MECHANISM, first))
        yield
    finally:
        for s in socks:
            s.close()


class _Queries:
    """A live session's statements, one every 5 ms in a thread of their own, until the proxy
    cuts the session (its error and when it came are kept)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        conn.prepare_threshold = None  # every execution sends its text (a Parse) to be recorded
        # a FATAL that reaches libpq between two queries is handed to the notice handler
        self.notices: list[str] = []
        conn.add_notice_handler(lambda diag: self.notices.append(str(diag.message_primary)))
        self.done = 0
        self.error: str | None = None
        self.at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.conn.execute("SELECT %s::text", [secrets.token_hex(4)])
                self.done += 1
                time.sleep(0.005)
        except psycopg.Error as exc:
            self.error, self.at = str(exc), time.monotonic()

    def __enter__(self) -> _Queries:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.conn.close()
        assert not self._thread.is_alive()

    def __repr__(self) -> str:
        return f"<{self.done} queries, error {self.error!r}>"

    def assert_cut_by_revoke(self, world: ProxyWorld, grant_id: int) -> None:
        """Revoke the session's grant (``jitvault grant revoke``): the session is cut, its
        client told why, within the bound of the revoke's start."""
        revoked = time.monotonic()
        world.revoke(grant_id)
        self._thread.join(CUT_BOUND_SECONDS + 10)
        assert not self._thread.is_alive(), "the revoked session was not cut"
        told = [str(self.error), *self.notices]
        assert any("terminating connection: access grant revoked" in m for m in told), told
        print(f"cut {self.at - revoked:.2f} s after the revoke started")
        assert self.at - revoked < CUT_BOUND_SECONDS


def test_a_login_flood_on_a_slow_store_holds_back_neither_recordings_nor_a_revoke(
    world: ProxyWorld,
) -> None:
    access = _access(world)
    info = _connect_info(world, access)
    store = _store(world)
    locker = psycopg.connect(store)
    # an unknown token from each of FLOOD addresses: each lookup waits for the lock
    sources = [f"127.0.0.{10 + i}" for i in range(FLOOD)]
    try:
        with _Queries(_psycopg(info, sslmode="disable")) as queries:
            session_id = int(world.cli("session", "list", "--live", env=world.admin_env)[0]["id"])
            locker.execute("LOCK TABLE session_tokens IN ACCESS EXCLUSIVE MODE")
            with _unproven_logins(info["port"], access.role, sources):
                _flooded(store, session_id, queries)
                # and a revoke still cuts the session in time
                queries.assert_cut_by_revoke(world, access.grant_id)
                assert _waiting_lookups(store) >= 1  # all of it while the store was still locked
    finally:
        locker.rollback()
        locker.close()


def _flooded(store: str, session_id: int, queries: _Queries) -> None:
    """The flood's lookups wait in the shared pool, and the session's recordings are still
    written."""
    deadline = time.monotonic() + 20
    while _waiting_lookups(store) < 4:  # the shared pool is busy waiting
        assert time.monotonic() < deadline, "the flood's lookups never reached the store"
        time.sleep(0.1)
    before = _recorded_rows(store, session_id)
    deadline = time.monotonic() + 10
    while _recorded_rows(store, session_id) <= before:
        assert time.monotonic() < deadline, f"no recording was written during the flood {queries}"
        time.sleep(0.2)
    assert queries.error is None, queries


#: clients of a TLS flood at once, and the handshakes it starts at most (whatever the time;
#: each leaves a loopback port in TIME_WAIT, and this stays well below their range)
TLS_FLOOD = 300
TLS_FLOOD_MAX = 20_000
#: where a TLS flood comes from (the live session and the logins after come from 127.0.0.1)
TLS_FLOOD_SOURCE = "127.0.0.7"


def _client_hello() -> bytes:
    """A TLS ClientHello, sent as it is by every client of a flood: the proxy does the work of
    a handshake (a key exchange, a signature) for each, and the client none."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_side=False)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@contextlib.contextmanager
def _tls_hellos(port: int) -> Iterator[dict[str, int]]:
    """TLS_FLOOD clients at once from TLS_FLOOD_SOURCE, each making the proxy start one TLS
    handshake after another (an SSLRequest, a ClientHello, the first byte of the proxy's answer
    read, closed): in the dict, how many the proxy answered (``answered``), refused at once
    (``refused``: the address's places among the connections logging in were all taken) and
    how many went otherwise (``failed``). Stopped on exit (at most TLS_FLOOD_MAX connections
    in all)."""
    counts = {"answered": 0, "refused": 0, "failed": 0}
    stop = threading.Event()
    hello = _client_hello()

    async def handshake() -> str:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(TLS_FLOOD_SOURCE, 0)
        )
        try:
            writer.write(pg.ssl_request())
            first = await reader.readexactly(1)
            if first != b"S":
                return "refused" if first == b"E" else "failed"
            writer.write(hello)
            return "answered" if await reader.read(1) != b"" else "failed"
        finally:
            writer.close()

    async def client() -> None:
        while not stop.is_set() and sum(counts.values()) < TLS_FLOOD_MAX:
            try:
                outcome = await asyncio.wait_for(handshake(), 5)
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                outcome = "failed"
            counts[outcome] += 1

    async def flood() -> None:
        await asyncio.gather(*(client() for _ in range(TLS_FLOOD)))

    flooding = threading.Thread(target=asyncio.run, args=(flood(),), daemon=True)
    flooding.start()
    try:
        yield counts
    finally:
        stop.set()
        flooding.join(30)
        assert not flooding.is_alive()


def test_a_tls_handshake_flood_holds_back_no_revoke(world: ProxyWorld) -> None:
    access = _access(world)
    info = _connect_info(world, access)
    with (
        _Queries(_psycopg(info, sslmode="disable")) as queries,
        _tls_hellos(info["port"]) as hellos,
    ):
        started = time.monotonic()
        while hellos["answered"] < 2 * TLS_FLOOD:
            assert time.monotonic() < started + 30, f"the proxy answered no flood {hellos}"
            time.sleep(0.1)
        assert queries.error is None, queries
        answered = hellos["answered"]
        queries.assert_cut_by_revoke(world, access.grant_id)
        assert hellos["answered"] > answered, hellos  # the flood went on meanwhile
        took = time.monotonic() - started
    print(
        f"TLS flood: {hellos['answered'] / took:.0f} handshakes answered and"
        f" {hellos['refused'] / took:.0f} connections refused a second ({hellos})"
    )
    # the flood's address had all its places among the connections logging in, no more
    assert hellos["refused"] > 0, hellos
    assert hellos["failed"] == 0, hellos
    # and the proxy serves a TLS client right after
    info = _connect_info(world, _access(world))
    with _psycopg(info) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_login_flood_from_one_address_holds_back_no_other_address_login(
    world: ProxyWorld,
) -> None:
    access = _access(world)
    info = _connect_info(world, access)
    store = _store(world)
    outcome: dict[str, Any] = {}

    def log_in() -> None:
        try:
            with _psycopg(info, sslmode="disable", connect_timeout=30) as conn:
                outcome["user"] = conn.execute("SELECT current_user").fetchone()
        except psycopg.Error as exc:
            outcome["error"] = str(exc)

    locker = psycopg.connect(store)
    other = threading.Thread(target=log_in, daemon=True)
    try:
        locker.execute("LOCK TABLE session_tokens IN ACCESS EXCLUSIVE MODE")
        with _unproven_logins(info["port"], access.role, ["127.0.0.2"] * FLOOD):
            deadline = time.monotonic() + 20
            while _waiting_lookups(store) < PER_SOURCE:
                assert time.monotonic() < deadline, "the flood's lookups never reached the store"
                time.sleep(0.1)
            time.sleep(1.0)  # time for the flood to take more threads, if it could
            assert _waiting_lookups(store) == PER_SOURCE
            other.start()  # from 127.0.0.1: its lookup reaches the store beside the flood's
            deadline = time.monotonic() + 20
            while _waiting_lookups(store) < PER_SOURCE + 1:
                assert time.monotonic() < deadline, "the login waits behind the flood"
                time.sleep(0.1)
            locker.rollback()
            other.join(30)
            assert outcome == {"user": (access.role,)}
    finally:
        locker.rollback()
        locker.close()
        if other.ident is not None:
            other.join(30)

"""Work that clients cause before they log in cannot hold back the cuts and the recordings.

Each login attempt (and each cancel request) looks its token up in the store, in the proxy
loop's shared thread pool. A flood of them against a slow store (here: the token table locked,
so every lookup waits) fills that pool. The session watcher and the recording writer have
threads of their own: meanwhile a live session's statements are still written, and a revoke
still cuts it within the bound.

Always on PostgreSQL (a table lock that readers wait for), whatever ``--db`` says.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

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


def test_a_login_flood_on_a_slow_store_holds_back_neither_recordings_nor_a_revoke(
    world: ProxyWorld,
) -> None:
    access = _access(world)
    info = _connect_info(world, access)
    store = _store(world)
    conn = _psycopg(info, sslmode="disable")
    conn.prepare_threshold = None  # every execution sends its text (a Parse) to be recorded
    # a FATAL that reaches libpq between two queries is handed to the notice handler
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(str(diag.message_primary)))
    session_id = int(world.cli("session", "list", "--live", env=world.admin_env)[0]["id"])
    queries: dict[str, Any] = {"done": 0, "error": None, "at": None}
    stop = threading.Event()

    def run_queries() -> None:
        try:
            while not stop.is_set():
                conn.execute("SELECT %s::text", [secrets.token_hex(4)])
                queries["done"] += 1
                time.sleep(0.005)
        except psycopg.Error as exc:
            queries["error"], queries["at"] = str(exc), time.monotonic()

    def attempt() -> None:  # an unknown token: its lookup waits for the lock, then fails
        with contextlib.suppress(psycopg.OperationalError):
            _psycopg(
                info,
                sslmode="disable",
                user=f"{access.role}.{secrets.token_hex(8)}",
                password="jvs_x_y",
                connect_timeout=30,
            ).close()

    locker = psycopg.connect(store)
    flood = [threading.Thread(target=attempt, daemon=True) for _ in range(FLOOD)]
    querying = threading.Thread(target=run_queries, daemon=True)
    try:
        querying.start()
        locker.execute("LOCK TABLE session_tokens IN ACCESS EXCLUSIVE MODE")
        for th in flood:
            th.start()
        deadline = time.monotonic() + 20
        while _waiting_lookups(store) < 4:  # the shared pool is busy waiting
            assert time.monotonic() < deadline, "the flood's lookups never reached the store"
            time.sleep(0.1)
        # recordings are still written
        before = _recorded_rows(store, session_id)
        deadline = time.monotonic() + 10
        while _recorded_rows(store, session_id) <= before:
            assert time.monotonic() < deadline, (
                f"no recording was written during the flood {queries}"
            )
            time.sleep(0.2)
        assert queries["error"] is None, queries
        # and a revoke still cuts the session in time
        world.revoke(access.grant_id)
        revoked = time.monotonic()
        querying.join(CUT_BOUND_SECONDS + 10)
        assert not querying.is_alive(), "the revoked session was not cut"
        told = [str(queries["error"]), *notices]
        assert any("terminating connection: access grant revoked" in m for m in told), told
        assert queries["at"] - revoked < CUT_BOUND_SECONDS
        assert _waiting_lookups(store) >= 1  # all of it while the store was still locked
    finally:
        stop.set()
        locker.rollback()
        locker.close()
        for th in flood:
            th.join(40)
        querying.join(10)
        conn.close()
    assert not any(th.is_alive() for th in [querying, *flood])

"""A node that stops ends its own sessions; the sessions of a node that crashed are ended by
the next worker pass that finds them unheld. Real ``jitvault server`` processes, real clients,
the tests' cluster and sshd as the targets.

1. SIGTERM: every live PostgreSQL session (both relays) is cut with FATAL 57P01 saying the
   server is shutting down, its row ends with that reason, and an ``--end-on-disconnect``
   grant stays active: the next server lets the client in at once. An SSH session is told
   on its stderr, and its command ends on the target.
2. kill -9: nothing ends the sessions the dead node held, so they would hold the grant's
   ``max_connections`` until it ends; the next start's worker ends them as lost once
   ``server.session_lost_seconds`` have passed without a heartbeat, and the client gets in.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jitvault.plugin_api import CONNECT_AGAIN_HINT, NODE_STOPPING
from jitvault.services import sessions
from tests.integration.test_pg_proxy import (
    RELAYS,
    TARGET,
    ProxyWorld,
    _access,
    _connect_info,
    _psycopg,
    proxy_world,
)
from tests.integration.test_ssh_proxy import SshWorld, _register, _sessions_of, _wait_no_process
from tests.integration.test_ssh_proxy import _access as _ssh_access
from tests.integration.test_ssh_proxy import _connect_info as _ssh_connect_info
from tests.pgcluster import PgCluster
from tests.ssh_clients import streaming_client
from tests.sshd import SshdServer
from tests.support import ServerProcess, cli_env, start_server, wait_port
from tests.world import server_world

LOST_SECONDS = 3
#: how long a lost session may take to be ended: the threshold, a worker pass, a loaded CI
LOST_BOUND_SECONDS = 30.0


@pytest.fixture
def world(db_kind: str, tmp_path: Path, pg_cluster: PgCluster) -> Iterator[ProxyWorld]:
    policy = (
        "rules:\n  - name: node-stop\n"
        f"    match: {{targets: [{TARGET}]}}\n    auto_approve: true\n"
        "    max_connections: 1\n"
    )
    with proxy_world(db_kind, tmp_path, pg_cluster, policy) as w:
        yield w


def _restart(world: ProxyWorld) -> ServerProcess:
    """A new server on the world's config and API port (the old one is gone); short
    heartbeats and worker passes."""
    port = int(world.server.addr.rsplit(":", 1)[1])
    env = cli_env(
        JITVAULT_SERVER__SESSION_LOST_SECONDS=str(LOST_SECONDS),
        JITVAULT_SERVER__WORKER_INTERVAL="0.2",
    )
    server = start_server(world.config, port, env)
    wait_port(world.pg_port)
    return server


def _session_rows(world: ProxyWorld, grant_id: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = world.cli("session", "list", env=world.admin_env)
    return [r for r in rows if r["grant_id"] == grant_id]


def _connect_or_why(info: dict[str, Any]) -> psycopg.Connection[Any] | str:
    """A new connection, or why it is refused. A connection taken is kept, not closed at once
    to try again: its session's end is recorded after the close returns, so with
    ``max_connections: 1`` the next attempt could still find the place held."""
    try:
        return _psycopg(info, sslmode="disable")
    except psycopg.OperationalError as exc:
        return str(exc)


@RELAYS
def test_a_stopping_server_tells_each_client_why_and_ends_its_sessions(
    world: ProxyWorld, sslmode: str
) -> None:
    access = _access(world, end_on_disconnect=True)
    info = _connect_info(world, access)
    conn = _psycopg(info, sslmode=sslmode)
    assert conn.execute("SELECT current_user").fetchone() == (access.role,)
    world.server.stop()  # SIGTERM
    with pytest.raises(psycopg.OperationalError) as caught:
        conn.execute("SELECT 1")
    conn.close()
    diag = caught.value.diag
    assert diag.sqlstate == "57P01", str(caught.value)
    assert diag.message_primary == f"terminating connection: {NODE_STOPPING.reason}"
    assert diag.message_hint == CONNECT_AGAIN_HINT
    server = _restart(world)
    try:
        [row] = _session_rows(world, access.grant_id)
        assert row["ended_at"] is not None
        assert row["end_reason"] == NODE_STOPPING.reason
        # the grant is not ended by its user's last disconnect: its user did not disconnect
        assert world.grant(access.grant_id)["state"] == "active"
        with _psycopg(info, sslmode=sslmode) as again:  # its one connection is free at once
            assert again.execute("SELECT current_user").fetchone() == (access.role,)
    finally:
        server.stop()


def test_the_sessions_of_a_crashed_server_are_ended_as_lost_and_free_their_places(
    world: ProxyWorld,
) -> None:
    access = _access(world)
    info = _connect_info(world, access)
    conns = [_psycopg(info, sslmode="disable")]
    try:
        assert conns[0].execute("SELECT current_user").fetchone() == (access.role,)
        [row] = _session_rows(world, access.grant_id)
        assert row["ended_at"] is None
        world.server.kill9()  # nobody tells the store: its end reason shows who ended it
        server = _restart(world)
        try:
            deadline = time.monotonic() + LOST_BOUND_SECONDS
            while isinstance(taken := _connect_or_why(info), str):
                assert "too many connections for this access grant" in taken
                assert time.monotonic() < deadline, "the lost session still holds its place"
                time.sleep(0.2)
            conns.append(taken)
            assert conns[-1].execute("SELECT current_user").fetchone() == (access.role,)
            rows = {r["id"]: r for r in _session_rows(world, access.grant_id)}
            assert rows[row["id"]]["end_reason"] == sessions.LOST_REASON
            assert [r["id"] for r in rows.values() if r["ended_at"] is None] == [max(rows)]
            # a session the live node holds is never taken for lost: its heartbeat goes on
            time.sleep(LOST_SECONDS * 2.5)
            assert conns[-1].execute("SELECT 1").fetchone() == (1,)
            assert _session_rows(world, access.grant_id)[0]["ended_at"] is None
            events = world.cli("audit", "list", "--limit", "1000", env=world.admin_env)
            lost = [
                e
                for e in events
                if e["action"] == "session.ended" and e["subject"] == f"session:{row['id']}"
            ]
            assert [e["details"]["reason"] for e in lost] == [sessions.LOST_REASON]
        finally:
            server.stop()
    finally:
        for c in conns:
            c.close()


def test_a_stopping_server_tells_an_ssh_client_why_and_ends_its_command(
    db_kind: str, tmp_path: Path, sshd_server: SshdServer
) -> None:
    with server_world(SshWorld, db_kind, tmp_path, "alice", sshd=sshd_server) as world:
        _register(world.admin_env, "web1", sshd_server)
        world.policy("rules:\n  - name: s\n    match: {targets: [web1]}\n    auto_approve: true\n")
        wait_port(world.ssh_port, what="the SSH proxy")
        access = _ssh_access(world)
        th, out = streaming_client(_ssh_connect_info(world, access))
        world.server.stop()  # SIGTERM
        th.join(20)
        assert not th.is_alive()
        said = f"jitvault: {NODE_STOPPING.reason}\r\njitvault: {CONNECT_AGAIN_HINT}"
        assert said.encode() in out["stderr"], out
        _wait_no_process(access.account)
        server = start_server(world.config, int(world.server.addr.rsplit(":", 1)[1]))
        try:
            [row] = _sessions_of(world, access.grant_id)
            assert row["end_reason"] == NODE_STOPPING.reason
        finally:
            server.stop()

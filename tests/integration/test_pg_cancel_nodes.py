"""A PostgreSQL cancel request is a new connection: behind a load balancer (or with
``server.proxy_reuse_port``), it may reach another node than the one holding the session. Two
``jitvault server`` processes on one PostgreSQL state store, each its own proxy port, behind a
balancer that sends the first connection to one node and every later one to the other: the
client's cancel request, arriving at the other node, cancels the running query.

Always on PostgreSQL (several nodes need a shared store), whatever ``--db`` says.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import scratch_database
from tests.integration.test_pg_proxy import ProxyWorld, _access, _connect_info, _psql_login
from tests.integration.test_ssh_reuse_port import _postgres_available
from tests.pgcluster import PgCluster
from tests.support import (
    ServerProcess,
    add_cluster_target,
    add_requester,
    cli_env,
    free_port,
    start_server,
    wait_port,
)
from tests.world import data_dir_on_free_ports, until

TARGET = "pgc"
#: connections the balancer accepts at most (a session and its cancel request need two)
MAX_CONNECTIONS = 8


class Balancer:
    """A TCP balancer on a loopback port: the first connection goes to port ``first``, every
    later one to port ``then``. Counts what it sent where; stops its threads at close."""

    def __init__(self, first: int, then: int) -> None:
        self.ports = (first, then)
        self.sent = [0, 0]
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        accepted = 0
        while not self._stop.is_set() and accepted < MAX_CONNECTIONS:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            which = 0 if accepted == 0 else 1
            accepted += 1
            server = socket.create_connection(("127.0.0.1", self.ports[which]), timeout=10)
            self.sent[which] += 1
            self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                pump = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                self._threads.append(pump)
                pump.start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(None)
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for th in self._threads:
            th.join(10)
        assert not any(th.is_alive() for th in self._threads), "a balancer thread is stuck"


@pytest.fixture
def two_nodes(tmp_path: Path, pg_cluster: PgCluster) -> Iterator[tuple[ProxyWorld, int]]:
    """The first node as a proxy world (the cluster as its target), and the PostgreSQL proxy
    port of a second node on the same state store."""
    if not _postgres_available():
        pytest.skip("needs the tests' PostgreSQL (JITVAULT_TEST_PG)")
    with scratch_database("postgres", tmp_path) as database_url:
        data = data_dir_on_free_ports(tmp_path, database_url)
        servers: list[ServerProcess] = [start_server(data.config, data.api_port)]
        try:
            other_pg_port = free_port()
            # two nodes on one machine: each its own proxy ports
            env = cli_env(
                JITVAULT_SERVER__PG_PROXY_PORT=str(other_pg_port),
                JITVAULT_SERVER__SSH_PROXY_PORT=str(free_port()),
            )
            servers.append(start_server(data.config, free_port(), env))
            admin_env = cli_env(servers[0].addr, data.token)
            world = ProxyWorld(
                server=servers[0],
                config=data.config,
                tmp=tmp_path,
                pg_port=data.pg_port,
                ssh_port=data.ssh_port,
                admin_env=admin_env,
                user="alice",
                user_env=add_requester(admin_env, servers[0].addr, "alice"),
                cluster=pg_cluster,
            )
            add_cluster_target(pg_cluster, TARGET, admin_env)
            world.policy(
                "rules:\n  - name: cancel-tests\n"
                f"    match: {{targets: [{TARGET}]}}\n    auto_approve: true\n"
            )
            wait_port(data.pg_port)
            wait_port(other_pg_port)
            yield world, other_pg_port
        finally:
            for server in servers:
                server.stop()


def test_a_cancel_request_reaching_another_node_cancels_the_query_there(
    two_nodes: tuple[ProxyWorld, int],
) -> None:
    world, other_pg_port = two_nodes
    access = _access(world)
    info = _connect_info(world, access)
    balancer = Balancer(first=info["port"], then=other_pg_port)
    # psql in its own process: it sends the cancel request on Ctrl-C (SIGINT), as a user's does
    conninfo, env = _psql_login(info, balancer.port)
    psql = subprocess.Popen(
        ["/usr/bin/psql", conninfo, "-XAtc", "SELECT pg_sleep(20)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        until("the query runs", lambda: _sleeping(world, access.role), bound=15)
        started = time.monotonic()
        psql.send_signal(signal.SIGINT)
        _, err = psql.communicate(timeout=15)
        assert time.monotonic() - started < 10
        assert "canceling statement due to user request" in err, err
        # the session went through the first node, its cancel request through the other
        assert balancer.sent == [1, 1]
    finally:
        if psql.poll() is None:
            psql.kill()
            psql.wait(10)
        balancer.close()


def _sleeping(world: ProxyWorld, role: str) -> bool:
    rows = world.cluster.sql(
        "SELECT count(*) FROM pg_catalog.pg_stat_activity"
        " WHERE usename = %s AND state = 'active' AND query LIKE 'SELECT pg_sleep%%'",
        [role],
    )
    return int(rows[0][0]) == 1

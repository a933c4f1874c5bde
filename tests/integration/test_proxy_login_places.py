"""The connections of a node that have not logged in yet are bounded, in all and per client
address (``server.proxy_max_startups``, ``server.proxy_max_startups_per_source``), across its
proxies: a connection over a bound is refused at once (PostgreSQL: ``FATAL 53300`` with a hint;
SSH: closed before the version exchange, as sshd does), a logged-in session holds no place, and
every way a login ends gives its place back.

A real ``jitvault server`` with small bounds, real clients (``psql``, psycopg, OpenSSH, paramiko)
from 127.0.0.1, and connections held half-way through a login from other loopback addresses.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from jitvault_postgres import protocol as pg
from tests.integration.test_pg_proxy import (
    TARGET,
    ProxyWorld,
    _access,
    _connect_info,
    _psql_login,
    _psycopg,
    proxy_world,
)
from tests.integration.test_pg_proxy_flood import _unproven_logins
from tests.integration.test_ssh_proxy import TARGET as SSH_TARGET
from tests.integration.test_ssh_proxy import SshWorld, _register
from tests.integration.test_ssh_proxy import _access as _ssh_access
from tests.integration.test_ssh_proxy import _connect_info as _ssh_connect_info
from tests.pgcluster import PgCluster
from tests.ssh_clients import dest, openssh, paramiko_client
from tests.sshd import SshdServer
from tests.support import cli_env, wait_port
from tests.world import server_world

MOST = 6
PER_SOURCE = 3
FULL = "too many connections are logging in to the proxy at once"
SETTINGS = {
    "JITVAULT_SERVER__PROXY_MAX_STARTUPS": str(MOST),
    "JITVAULT_SERVER__PROXY_MAX_STARTUPS_PER_SOURCE": str(PER_SOURCE),
}


@pytest.fixture(scope="module")
def world(
    db_kind: str, tmp_path_factory: pytest.TempPathFactory, pg_cluster: PgCluster
) -> Iterator[ProxyWorld]:
    policy = (
        f"rules:\n  - name: places\n    match: {{targets: [{TARGET}]}}\n"
        "    auto_approve: true\n    max_connections: 20\n"
    )
    tmp = tmp_path_factory.mktemp("places")
    with proxy_world(db_kind, tmp, pg_cluster, policy, settings=SETTINGS) as w:
        yield w


@pytest.fixture(scope="module")
def info(world: ProxyWorld) -> dict[str, Any]:
    return _connect_info(world, _access(world))


def _first_answer(port: int, source: str) -> list[pg.Message]:
    """What the proxy answers a client from ``source`` that asks for TLS, up to its close or
    its one-byte yes/no."""
    with socket.socket() as s:
        s.settimeout(10)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(pg.ssl_request())
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(4096):
                data += chunk
                if data in (b"S", b"N"):
                    return []
        assert data, "the proxy closed the connection without a word"
        return list(pg.BackendReader().feed(data))


def _wait_admitted(port: int, source: str) -> None:
    """Until a connection from ``source`` is let in (the proxy learns of closes a moment after
    they happen)."""
    deadline = time.monotonic() + 10
    while _first_answer(port, source):
        assert time.monotonic() < deadline, f"{source} is still refused 10 s after its logins ended"
        time.sleep(0.05)


def _assert_refused(messages: list[pg.Message]) -> None:
    assert len(messages) == 1, messages
    error = messages[0]
    assert isinstance(error, pg.ErrorResponse), error
    assert (error.sqlstate, error.fields["S"], error.message) == ("53300", "FATAL", FULL)
    assert error.hint == "Try again in a few seconds."


def _logs_in(info: dict[str, Any]) -> None:
    with _psycopg(info) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def _psql(info: dict[str, Any], sslmode: str = "require") -> subprocess.CompletedProcess[str]:
    conninfo, env = _psql_login(info)
    conninfo = conninfo.replace("sslmode=require", f"sslmode={sslmode}")
    return subprocess.run(
        ["psql", conninfo, "-Atc", "SELECT 42"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_connections_logging_in_are_bounded_per_address_and_in_all_and_the_rest_refused(
    world: ProxyWorld, info: dict[str, Any]
) -> None:
    with _unproven_logins(world.pg_port, "nobody", ["127.0.0.2"] * PER_SOURCE):
        # the address's bound: its next connection is told why at once, before the proxy has
        # read a byte of it
        _assert_refused(_first_answer(world.pg_port, "127.0.0.2"))
        # another address logs in
        done = _psql(info)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "42"
        with _unproven_logins(world.pg_port, "nobody", ["127.0.0.3"] * PER_SOURCE):
            # the node's bound: now every address is refused, psql users told why
            _assert_refused(_first_answer(world.pg_port, "127.0.0.4"))
            done = _psql(info, sslmode="disable")
            assert done.returncode != 0
            assert f"FATAL:  {FULL}" in done.stderr, done.stderr
            assert "HINT:  Try again in a few seconds." in done.stderr, done.stderr
            # libpq shows no text it got before TLS to a client that asked for TLS (anyone on
            # the path could have sent it): only that the server refused
            done = _psql(info)
            assert done.returncode != 0
            assert "server sent an error response during SSL exchange" in done.stderr
            with pytest.raises(psycopg.OperationalError, match="error response"):
                _logs_in(info)
        # the places of logins that ended are given back
        _wait_admitted(world.pg_port, "127.0.0.1")
        _logs_in(info)
    _wait_admitted(world.pg_port, "127.0.0.2")
    log = world.server.log.read_text()
    assert "new connection(s) refused" in log
    assert "server.proxy_max_startups" in log


def test_logged_in_sessions_hold_no_place(world: ProxyWorld, info: dict[str, Any]) -> None:
    with contextlib.ExitStack() as stack:
        sessions = [stack.enter_context(_psycopg(info)) for _ in range(MOST + 2)]
        for conn in sessions:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with _unproven_logins(world.pg_port, "nobody", ["127.0.0.5"] * PER_SOURCE):
            _logs_in(info)


def _held_ssh(port: int, source: str) -> socket.socket:
    """A connection to the SSH proxy from ``source`` that has read the version and says nothing."""
    s = socket.socket()
    s.settimeout(10)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    assert s.recv(256).startswith(b"SSH-2.0-")
    return s


def _ssh(world: ProxyWorld) -> subprocess.CompletedProcess[str]:
    """OpenSSH's client against the SSH proxy (no target behind it: it gets as far as the
    password prompt, which BatchMode refuses)."""
    return subprocess.run(
        [
            "ssh", "-p", str(world.ssh_port), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=10", "-F", "/dev/null", "nobody.1@127.0.0.1", "true",
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_the_bound_is_the_nodes_across_its_proxies_and_ssh_clients_are_closed_before_the_version(
    world: ProxyWorld,
) -> None:
    with contextlib.ExitStack() as stack:
        # an address with half its places in SSH logins and half in PostgreSQL ones
        stack.enter_context(_unproven_logins(world.pg_port, "nobody", ["127.0.0.1"]))
        for _ in range(PER_SOURCE - 1):
            stack.enter_context(_held_ssh(world.ssh_port, "127.0.0.1"))
        refused = _ssh(world)
        assert refused.returncode == 255
        assert "kex_exchange_identification" in refused.stderr, refused.stderr
        with (
            socket.create_connection(("127.0.0.1", world.ssh_port), timeout=10) as s,
            contextlib.suppress(ConnectionResetError),
        ):
            assert s.recv(256) == b""  # not a byte of the version
    # given back: OpenSSH gets as far as authentication
    _wait_admitted(world.pg_port, "127.0.0.1")
    allowed = _ssh(world)
    assert allowed.returncode == 255
    assert "Permission denied" in allowed.stderr, allowed.stderr


def _bad_logins(port: int, source: str) -> Iterator[str]:
    """Logins from ``source`` that end before logging in, in each way but the timeout: each
    named once it has ended."""
    for how, first in (
        ("client closed", b""),
        ("protocol violation", b"\x00\x00\x00\x08\x00\x00\x00\x00"),
        ("garbage", os.urandom(64)),
        ("wrong token", None),
        ("tls torn", pg.ssl_request() + b"\x16\x03\x01\x00\xff" + os.urandom(32)),
    ):
        with socket.socket() as s:
            s.settimeout(10)
            s.bind((source, 0))
            s.connect(("127.0.0.1", port))
            if first is None:
                s.sendall(pg.startup_message({"user": "nobody.x", "database": "app"}))
                s.recv(4096)  # AuthenticationSASL
                s.sendall(pg.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc"))
                s.recv(4096)
                s.sendall(pg.sasl_response(b"c=biws,r=abcdef,p=AAAA"))
            else:
                s.sendall(first)
                s.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):
                while s.recv(4096):
                    pass
        yield how


def test_every_way_a_login_ends_gives_its_place_back(world: ProxyWorld) -> None:
    silent = socket.socket()  # says nothing: ended by the 10 s login timeout
    silent.settimeout(30)
    silent.bind(("127.0.0.6", 0))
    silent.connect(("127.0.0.1", world.pg_port))
    with silent:
        ended = []
        for _ in range(PER_SOURCE + 1):
            ended += list(_bad_logins(world.pg_port, "127.0.0.6"))
        assert len(ended) == 5 * (PER_SOURCE + 1)
        assert silent.recv(4096) == b""
    _wait_admitted(world.pg_port, "127.0.0.6")
    # and all of the address's places are free
    with _unproven_logins(world.pg_port, "nobody", ["127.0.0.6"] * PER_SOURCE):
        _assert_refused(_first_answer(world.pg_port, "127.0.0.6"))


@pytest.fixture(scope="module")
def ssh_world(
    db_kind: str, tmp_path_factory: pytest.TempPathFactory, sshd_server: SshdServer
) -> Iterator[SshWorld]:
    tmp = tmp_path_factory.mktemp("sshplaces")
    env = cli_env(**SETTINGS)
    with server_world(SshWorld, db_kind, tmp, "alice", server_env=env, sshd=sshd_server) as w:
        _register(w.admin_env, SSH_TARGET, sshd_server)
        w.policy(
            f"rules:\n  - name: places\n    match: {{targets: [{SSH_TARGET}]}}\n"
            "    auto_approve: true\n    max_connections: 20\n"
        )
        wait_port(w.ssh_port, what="the SSH proxy")
        yield w


def test_logged_in_ssh_sessions_hold_no_place(ssh_world: SshWorld) -> None:
    info = _ssh_connect_info(ssh_world, _ssh_access(ssh_world))
    transports = []
    try:
        for _ in range(MOST + 2):
            transport, _sock = paramiko_client(info)
            transports.append(transport)
            assert transport.is_authenticated()
        done = openssh("ssh", info, dest(info), "echo in")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "in"
    finally:
        for transport in transports:
            transport.close()

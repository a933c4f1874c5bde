"""Two ``jitvault server`` processes on one PostgreSQL state store sharing the SSH proxy port
with ``server.proxy_reuse_port`` (SO_REUSEPORT): both serve sessions, and a revoke cuts the
sessions of both. Without the opt-in, a second process does not get the port.

Always on PostgreSQL (several nodes need a shared store), whatever ``--db`` says.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
import psycopg
import pytest

from tests.conftest import scratch_database
from tests.ssh_clients import paramiko_client
from tests.sshd import SshdServer
from tests.support import (
    JITVAULT,
    PG_HOST_DSN,
    ServerProcess,
    add_requester,
    cli_env,
    free_port,
    run_cli,
    start_server,
    wait_port,
)
from tests.world import data_dir_on_free_ports, until

TARGET = "web1"
#: sessions opened at most while waiting for the kernel to hand one to each process
MAX_SESSIONS = 24


def _postgres_available() -> bool:
    try:
        with psycopg.connect(f"{PG_HOST_DSN}/postgres", connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@dataclass
class TwoNodes:
    servers: list[ServerProcess]
    config: Path
    ssh_port: int
    admin_env: dict[str, str]
    user_env: dict[str, str]
    sshd: SshdServer

    def cli(self, *args: str, env: dict[str, str], stdin: str | None = None) -> Any:
        done = run_cli(*args, "--json", env=env, stdin=stdin)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)


def _set_reuse_port(config: Path, on: bool) -> None:
    text = config.read_text()
    assert "proxy_reuse_port = false" in text
    config.write_text(
        text.replace("proxy_reuse_port = false", f"proxy_reuse_port = {str(on).lower()}")
    )


@pytest.fixture
def two_nodes(tmp_path: Path, sshd_server: SshdServer) -> Iterator[TwoNodes]:
    if not _postgres_available():
        pytest.skip("needs the tests' PostgreSQL (JITVAULT_TEST_PG)")
    with scratch_database("postgres", tmp_path) as database_url:
        data = data_dir_on_free_ports(tmp_path, database_url)
        _set_reuse_port(data.config, True)
        servers = [start_server(data.config, data.api_port)]
        try:
            servers.append(start_server(data.config, free_port()))
            admin_env = cli_env(servers[0].addr, data.token)
            user_env = add_requester(admin_env, servers[0].addr, "alice")
            nodes = TwoNodes(servers, data.config, data.ssh_port, admin_env, user_env, sshd_server)
            add = run_cli(
                "target", "add", "ssh", TARGET, "--host", sshd_server.host,
                "--port", str(sshd_server.port),
                "--option", f"host_key={sshd_server.host_key_line}", env=admin_env,
            )  # fmt: skip
            assert add.returncode == 0, add.stdout + add.stderr
            policy = tmp_path / "policy.yaml"
            policy.write_text(
                f"rules:\n  - name: t\n    match: {{targets: [{TARGET}]}}\n    auto_approve: true\n"
            )
            nodes.cli("policy", "apply", str(policy), env=admin_env)
            wait_port(data.ssh_port, what="the SSH proxy")
            yield nodes
        finally:
            for server in servers:
                server.stop()


class HeldSession:
    """A paramiko client running ``sleep`` through the proxy until the proxy ends it."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.transport, _ = paramiko_client(info)
        self.chan = self.transport.open_session()
        self.chan.exec_command("sleep 600")
        self.stderr = b""
        self.status: int | None = None
        self.done = threading.Event()
        threading.Thread(target=self._wait, daemon=True).start()

    def _wait(self) -> None:
        try:
            if self.chan.status_event.wait(60):
                self.status = self.chan.recv_exit_status()
            while self.chan.recv_stderr_ready():
                self.stderr += self.chan.recv_stderr(65536)
        except (OSError, paramiko.SSHException):
            pass
        finally:
            self.done.set()
            self.transport.close()


def _opened_by(server: ServerProcess) -> set[int]:
    """The sessions this process's proxy opened (from its log)."""
    text = server.log.read_text(errors="replace")
    return {int(m) for m in re.findall(r"ssh proxy: session (\d+) open", text)}


def test_two_nodes_sharing_the_ssh_port_both_serve_sessions_and_both_cut_them_at_revoke(
    two_nodes: TwoNodes,
) -> None:
    w = two_nodes
    account = w.sshd.add_user(password="pw-" + "x" * 20)
    w.cli("account", "add", TARGET, account, "--password-stdin", env=w.admin_env,
          stdin="pw-" + "x" * 20 + "\n")  # fmt: skip
    request = w.cli("request", "create", "--target", TARGET, "--account", account,
                    "--duration", "10m", "--reason", "two nodes", env=w.user_env)  # fmt: skip
    info = w.cli("connect", str(request["id"]), env=w.user_env)
    held: list[HeldSession] = []
    try:
        # the kernel spreads connections over the two listeners by their addresses: open
        # sessions until each process has one (all 24 on one process: 2**-23)
        for _ in range(MAX_SESSIONS):
            held.append(HeldSession(info))
            until("the session is open", lambda: len(set.union(*map(_opened_by, w.servers)))
                  >= len(held))  # fmt: skip
            if all(_opened_by(s) for s in w.servers):
                break
        assert all(_opened_by(s) for s in w.servers), [_opened_by(s) for s in w.servers]

        run_cli("grant", "revoke", str(request["grant_id"]), "--reason", "incident over",
                env=w.admin_env)  # fmt: skip
        for session in held:
            assert session.done.wait(30)
            assert b"jitvault: access grant revoked" in session.stderr, session.stderr
            assert session.status == 255
    finally:
        for session in held:
            session.transport.close()


def test_without_the_opt_in_a_second_node_does_not_get_the_proxy_port(
    tmp_path: Path, sshd_server: SshdServer
) -> None:
    if not _postgres_available():
        pytest.skip("needs the tests' PostgreSQL (JITVAULT_TEST_PG)")
    with scratch_database("postgres", tmp_path) as database_url:
        data = data_dir_on_free_ports(tmp_path, database_url)
        first = start_server(data.config, data.api_port)
        try:
            wait_port(data.ssh_port, what="the SSH proxy")
            second = subprocess.run(
                [JITVAULT, "server", "--config", str(data.config), "--port", str(free_port())],
                capture_output=True,
                text=True,
                env=cli_env(),
                timeout=60,
            )
            assert second.returncode != 0
            assert "proxy port" in second.stderr, second.stderr
            assert "is in use" in second.stderr, second.stderr
            assert "ssh proxy listening" not in second.stderr
        finally:
            first.stop()

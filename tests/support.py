"""Helpers shared by the tests: free ports, real server processes, the CLI as a user runs it."""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psycopg

from jitvault.services import Node
from tests import leftovers

if TYPE_CHECKING:
    from tests.pgcluster import PgCluster

VENV_BIN = Path(sys.executable).parent
JITVAULT = str(VENV_BIN / "jitvault")
#: the PostgreSQL server the suites and benches make their scratch databases on (the machine's
#: own, trusting local logins, unless ``JITVAULT_TEST_PG`` names another)
PG_HOST_DSN = os.environ.get("JITVAULT_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


@contextmanager
def scratch_postgres(prefix: str = "jvtest") -> Iterator[str]:
    """The URL of a new, empty database on ``PG_HOST_DSN``'s server, named ``prefix`` and a
    random suffix; dropped afterwards (its connections closed by force)."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(f"{PG_HOST_DSN}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        # a killed run's databases are dropped by the next run (tests/leftovers.py)
        conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{leftovers.db_comment()}'")
    try:
        yield f"{PG_HOST_DSN}/{name}"
    finally:
        with psycopg.connect(f"{PG_HOST_DSN}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A loopback port free now and not handed out before in this test run.

    The kernel may give the same ephemeral port to two binds in a row once the first socket is
    closed, so two calls (a server's PostgreSQL and SSH proxy ports) could otherwise collide."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port
    raise RuntimeError("no loopback port left that this test run has not handed out")


def wait_http(url: str, timeout: float = 30.0, ok: tuple[int, ...] = (200,)) -> httpx.Response:
    """Poll ``url`` until it answers one of ``ok`` (bounded in time)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(url, timeout=2.0)
            if resp.status_code in ok:
                return resp
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer {ok} within {timeout}s ({last})")


def wait_port(port: int, timeout: float = 15.0, what: str = "the proxy") -> None:
    """Wait until something listens on loopback ``port`` (bounded in time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{what} did not listen on {port}")


def cli_env(addr: str | None = None, token: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITVAULT_")}
    if addr:
        env["JITVAULT_ADDR"] = addr
    if token:
        env["JITVAULT_TOKEN"] = token
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``jitvault ARGS`` as a user would, capturing output."""
    return subprocess.run(
        [JITVAULT, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def init_data_dir(data_dir: Path, port: int, database_url: str | None = None) -> str:
    """``jitvault init`` as an operator runs it; returns the admin token it prints.

    ``database_url`` None keeps the default (SQLite in the data directory).
    """
    args = ["init", "--data-dir", str(data_dir), "--port", str(port)]
    if database_url is not None:
        args += ["--database-url", database_url]
    done = run_cli(*args, env=cli_env())
    assert done.returncode == 0, done.stderr
    # a server refuses to start when a proxy port is taken: never depend on the defaults
    use_free_proxy_ports(data_dir / "config.toml")
    for line in done.stdout.splitlines():
        if line.startswith("export JITVAULT_TOKEN="):
            return line.split("=", 1)[1].strip()
    raise AssertionError(f"jitvault init printed no token: {done.stdout}")


def use_free_proxy_ports(config: Path) -> tuple[int, int]:
    """Move the proxies of an initialized data directory to free ports (the defaults may be
    taken by another run on this machine); returns (PostgreSQL proxy port, SSH proxy port)."""
    pg_port, ssh_port = free_port(), free_port()
    text = config.read_text()
    for setting, port in (("ssh_proxy_port", ssh_port), ("pg_proxy_port", pg_port)):
        text, found = re.subn(rf"(?m)^{setting} = \d+$", f"{setting} = {port}", text)
        assert found == 1, f"config.toml has no {setting}"
    config.write_text(text)
    return pg_port, ssh_port


def add_requester(admin_env: dict[str, str], addr: str, name: str) -> dict[str, str]:
    """``jitvault user add NAME --role requester`` and a token: that user's CLI environment."""
    added = run_cli("user", "add", name, "--role", "requester", env=admin_env)
    assert added.returncode == 0, added.stderr
    made = run_cli("token", "create", name, env=admin_env)
    assert made.returncode == 0, made.stderr
    return cli_env(addr, made.stdout.strip())


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    addr: str
    data_dir: Path
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)


def start_server(
    config: Path,
    port: int,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    output: int | None = None,
) -> ServerProcess:
    """``jitvault server --config FILE --port PORT`` in the background; waits (bounded by
    ``timeout``) until it answers. RuntimeError with the end of its log if it exits first or
    does not answer in time. Its output (standard output and error) goes to its log file, or
    to the file descriptor ``output`` (the log file then stays empty)."""
    log = config.parent / f"server-{port}.log"
    fh = log.open("ab")
    proc = subprocess.Popen(
        [JITVAULT, "server", "--config", str(config), "--port", str(port)],
        stdout=fh if output is None else output,
        stderr=subprocess.STDOUT,
        env=env or cli_env(),
        start_new_session=True,
    )
    fh.close()
    addr = f"http://127.0.0.1:{port}"
    server = ServerProcess(proc, addr, config.parent, log)
    deadline = time.monotonic() + timeout
    while True:
        # an exited server is reported at once (and not mistaken for whatever else answers
        # on its port)
        if proc.poll() is not None:
            raise RuntimeError(
                f"server on port {port} exited with status {proc.returncode}:\n"
                f"{log.read_text()[-3000:]}"
            )
        try:
            wait_http(f"{addr}/v1/sys/seal-status", timeout=min(1.0, timeout))
            break
        except TimeoutError:
            if time.monotonic() >= deadline:
                server.stop()
                raise RuntimeError(
                    f"server on port {port} did not answer within {timeout}s:\n"
                    f"{log.read_text()[-3000:]}"
                ) from None
    if proc.poll() is not None:
        raise RuntimeError(f"server on port {port} exited:\n{log.read_text()[-3000:]}")
    return server


@contextmanager
def running_server(config: Path, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    server = start_server(config, free_port(), env)
    try:
        yield server
    finally:
        server.stop()


__all__ = [
    "JITVAULT",
    "ServerProcess",
    "add_requester",
    "cli_env",
    "free_port",
    "init_data_dir",
    "run_cli",
    "running_server",
    "start_server",
    "wait_http",
    "wait_port",
]


@contextmanager
def inserts_refused(node: Node, table: str) -> Iterator[None]:
    """A real trigger that makes every INSERT INTO ``table`` fail, dropped afterwards."""
    name = f"jv_test_refuse_{table}"
    if node.db.is_postgres:
        install = [
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{table} refused'; END $$",
            f"CREATE TRIGGER {name} BEFORE INSERT ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {name}()",
        ]
        remove = [f"DROP TRIGGER {name} ON {table}", f"DROP FUNCTION {name}()"]
    else:
        install = [
            f"CREATE TRIGGER {name} BEFORE INSERT ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{table} refused'); END"
        ]
        remove = [f"DROP TRIGGER {name}"]
    with node.db.begin() as conn:
        for statement in install:
            conn.exec_driver_sql(statement)
    try:
        yield
    finally:
        with node.db.begin() as conn:
            for statement in remove:
                conn.exec_driver_sql(statement)


def add_cluster_target(
    cluster: PgCluster, name: str, env: dict[str, str], sslmode: str = "disable"
) -> None:
    """``jitvault target add postgres NAME`` for a test cluster, its admin password on stdin;
    the proxy and the lifecycle reach it with ``sslmode``."""
    add = run_cli(
        "target", "add", "postgres", name, "--host", cluster.host, "--port",
        str(cluster.port), "--dbname", "postgres", "--option", f"sslmode={sslmode}",
        "--admin-user", cluster.admin_user, "--admin-password-stdin",
        env=env, stdin=cluster.admin_password.reveal() + "\n",
    )  # fmt: skip
    assert add.returncode == 0, add.stderr

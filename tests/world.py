"""The world of a live ``jitvault server`` that the proxy and lease tests share: a data
directory, the server with its proxies on free ports, an administrator and one requester, the
CLI as they run it, and bounded polling."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from jitvault.config import load_settings
from jitvault.services import Node
from jitvault.storage import workflow
from tests.conftest import scratch_database
from tests.support import (
    ServerProcess,
    add_requester,
    cli_env,
    free_port,
    init_data_dir,
    run_cli,
    start_server,
    use_free_proxy_ports,
)

#: bound on waits for the worker (1 s interval) to provision or clean up
WORKER_BOUND_SECONDS = 20.0


def until(what: str, check: Callable[[], bool], bound: float = WORKER_BOUND_SECONDS) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``bound`` seconds."""
    deadline = time.monotonic() + bound
    while not check():
        assert time.monotonic() < deadline, f"not within {bound} s: {what}"
        time.sleep(0.1)


@dataclass
class ServerWorld:
    """A running server, its config, the administrator's and one requester's CLI environments."""

    server: ServerProcess
    config: Path
    tmp: Path
    pg_port: int
    ssh_port: int
    admin_env: dict[str, str]
    user: str
    user_env: dict[str, str]

    def cli(self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Any:
        """``jitvault ARGS --json`` (as the requester unless ``env``); asserts success."""
        done = run_cli(*args, "--json", env=env or self.user_env, stdin=stdin)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    def fails(self, *args: str, env: dict[str, str] | None = None) -> str:
        """``jitvault ARGS`` that must fail; returns what it said."""
        done = run_cli(*args, env=env or self.user_env)
        assert done.returncode != 0, done.stdout
        return done.stdout + done.stderr

    def policy(self, text: str) -> None:
        """``jitvault policy apply`` of a policy file holding ``text``."""
        path = self.tmp / f"policy-{secrets.token_hex(3)}.yaml"
        path.write_text(text)
        applied = run_cli("policy", "apply", str(path), env=self.admin_env)
        assert applied.returncode == 0, applied.stderr

    def grant(self, grant_id: int) -> dict[str, Any]:
        """``jitvault grant show`` as the administrator."""
        shown: dict[str, Any] = self.cli("grant", "show", str(grant_id), env=self.admin_env)
        return shown

    def revoke(self, grant_id: int) -> None:
        """``jitvault grant revoke`` as the administrator."""
        self.cli("grant", "revoke", str(grant_id), "--reason", "done", env=self.admin_env)

    def provisioned(self, grant_id: int) -> None:
        """Wait until the worker has provisioned the grant."""
        until("provisioned", lambda: self.grant(grant_id)["provisioned_at"] is not None)

    def cleaned_up(self, grant_id: int) -> None:
        """Wait until the worker's cleanup job of the grant has run to its end."""
        node = self.node()
        try:
            until("the cleanup ran", lambda: cleanup_done(node, grant_id))
        finally:
            node.close()

    def node(self) -> Node:
        """An in-process node on the server's store, unsealed; the caller closes it."""
        node = Node.open(load_settings(self.config))
        node.vault.auto_unseal()
        return node

    @contextmanager
    def writes_held(self, table: str, bound: float = 60.0) -> Iterator[threading.Event]:
        """The store takes no write into ``table`` until the yielded event is set (or
        ``bound`` seconds pass): a transaction of our own holds the lock such a write needs
        (SQLite's one write lock, a SHARE lock on the table on PostgreSQL), so the server waits
        as it would behind a slow disk or a busy database."""
        release, held = threading.Event(), threading.Event()
        failed: list[BaseException] = []

        def hold() -> None:
            try:
                node = self.node()
                try:
                    with node.db.begin() as conn:
                        if node.db.is_postgres:
                            conn.exec_driver_sql(f"LOCK TABLE {table} IN SHARE MODE")
                        held.set()
                        release.wait(bound)
                finally:
                    node.close()
            except BaseException as exc:  # reported to the test below
                failed.append(exc)
                held.set()

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        assert held.wait(30), "could not take the store's lock"
        try:
            assert not failed, failed
            yield release
        finally:
            release.set()
            holder.join(30)
        assert not failed, failed


@dataclass
class DataDir:
    """An initialized data directory: its config, admin token and ports."""

    config: Path
    token: str
    api_port: int
    pg_port: int
    ssh_port: int


def data_dir_on_free_ports(tmp: Path, database_url: str) -> DataDir:
    """``jitvault init`` in ``tmp/data`` on ``database_url``, the API and both proxies on free
    ports (the proxies start together: one that cannot bind stops both)."""
    api_port = free_port()
    data = tmp / "data"
    token = init_data_dir(data, api_port, database_url)
    config = data / "config.toml"
    pg_port, ssh_port = use_free_proxy_ports(config)
    return DataDir(config, token, api_port, pg_port, ssh_port)


W = TypeVar("W", bound=ServerWorld)


@contextmanager
def server_world(
    kind: type[W],
    db_kind: str,
    tmp: Path,
    user: str,
    server_env: dict[str, str] | None = None,
    output: int | None = None,
    **extra: Any,
) -> Iterator[W]:
    """A data directory on a scratch store of ``db_kind`` (``data_dir_on_free_ports``), the
    server running (in ``server_env``, else the tests' own without ``JITVAULT_*``; its output
    to ``output``, see ``start_server``), and requester ``user``: a ``kind`` world with
    ``extra`` fields. The server stops afterwards."""
    with scratch_database(db_kind, tmp) as database_url:
        data = data_dir_on_free_ports(tmp, database_url)
        config, pg_port, ssh_port = data.config, data.pg_port, data.ssh_port
        server = start_server(config, data.api_port, server_env, output=output)
        try:
            admin_env = cli_env(server.addr, data.token)
            user_env = add_requester(admin_env, server.addr, user)
            yield kind(
                server=server,
                config=config,
                tmp=tmp,
                pg_port=pg_port,
                ssh_port=ssh_port,
                admin_env=admin_env,
                user=user,
                user_env=user_env,
                **extra,
            )
        finally:
            server.stop()


def cleanup_done(node: Node, grant_id: int) -> bool:
    """Whether the worker's cleanup job of the grant has run to its end."""
    with node.read() as conn:
        jobs = workflow.job_list(conn)
    payload = json.dumps({"grant_id": grant_id}, sort_keys=True)
    return any(
        j.kind == "grant.cleanup" and j.payload == payload and j.state == "done" for j in jobs
    )


def race(attempt: Callable[[], str], clients: int = 20, bound: float = 60.0) -> list[str]:
    """``clients`` threads released together by a barrier, each running ``attempt``; the
    outcomes they return, once all have joined (each within ``bound`` seconds)."""
    barrier = threading.Barrier(clients)
    results: list[str] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait(15)
        outcome = attempt()
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(bound)
    return results

"""``kill -9`` of a real ``jitvault server`` at one step of a rotation, then a restart: shared by
the crash tests of every target kind (PostgreSQL, SSH)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from jitvault.config import load_settings
from jitvault.domain import Sensitive
from jitvault.services import Node
from jitvault.storage import journal
from jitvault.storage import repositories as repo
from jitvault.storage import tables as t
from tests.support import cli_env, run_cli, start_server


def journal_rows(node: Node) -> int:
    with node.read() as conn:
        return int(conn.execute(select(func.count()).select_from(t.rotation_journal)).scalar_one())


def vaulted(
    node: Node, tname: str, username: str
) -> tuple[Sensitive[str] | None, Sensitive[str] | None]:
    """``(current, previous)`` secrets of an account, decrypted (for the test's own checks)."""
    with node.read() as conn:
        account = repo.account_get(conn, tname, username)
        cur, prev = journal.account_secrets(conn, node.vault.keyring, account.id)
    dec = lambda s: None if s is None else s.map(bytes.decode)  # noqa: E731
    return dec(cur), dec(prev)


def kill_9_during_rotations(
    config: Path,
    port: int,
    token: str,
    ref: str,
    step: str,
    runs: int,
    logs_in: Callable[[Sensitive[str]], bool],
) -> None:
    """``runs`` times: a server that SIGKILLs itself at ``step`` of rotating ``ref``
    (TARGET/ACCOUNT), then a clean restart; after each, reconciliation has left no journal
    entry, the vaulted secret logs in (``logs_in``) and ``jitvault account verify`` says ok."""
    addr = f"http://127.0.0.1:{port}"
    target, _, username = ref.partition("/")
    settings = load_settings(config)
    for run in range(runs):
        crashing = start_server(config, port, env=cli_env(JITVAULT_FAULT_CRASH_AT=step))
        try:
            with pytest.raises(httpx.TransportError):
                httpx.post(
                    f"{addr}/v1/targets/{target}/accounts/{username}/rotate",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=60,
                )
            crashing.proc.wait(30)
            assert crashing.proc.returncode == -signal.SIGKILL, f"run {run}: no crash at {step}"
        finally:
            crashing.stop()
        # restart without the fault: reconciliation runs at start
        server = start_server(config, port, env=cli_env())
        try:
            node = Node.open(settings)
            try:
                node.vault.auto_unseal()
                deadline = time.monotonic() + 30
                while journal_rows(node) and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert journal_rows(node) == 0, f"run {run}: journal entry left after {step}"
                current, _ = vaulted(node, target, username)
                assert current is not None
                assert logs_in(current), f"run {run}: vaulted secret lost at {step}"
            finally:
                node.close()
            verify = run_cli("account", "verify", ref, env=cli_env(addr, token))
            assert verify.returncode == 0, verify.stdout + verify.stderr
        finally:
            server.stop()


__all__ = ["journal_rows", "kill_9_during_rotations", "vaulted"]

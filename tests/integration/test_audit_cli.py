"""``jitvault audit`` as an operator runs it, against a real server process.

The server is initialized with ``jitvault init`` (SQLite in its data directory, or a scratch
PostgreSQL database with ``--db postgres``), the log is read, exported and verified through the
CLI, then a row is tampered with directly in the database and ``verify`` must name it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from jitvault.audit import GENESIS

from ..conftest import scratch_database
from ..support import (
    ServerProcess,
    cli_env,
    free_port,
    run_cli,
    start_server,
    use_free_proxy_ports,
)


@dataclass
class Server:
    proc: ServerProcess
    env: dict[str, str]
    database_url: str


@pytest.fixture
def server(db_kind: str, tmp_path: Path) -> Iterator[Server]:
    data_dir = tmp_path / "srv"
    port = free_port()
    with scratch_database(db_kind, tmp_path) as url:
        args = ["init", "--data-dir", str(data_dir), "--port", str(port)]
        if db_kind == "postgres":
            args += ["--database-url", url]
        else:
            url = f"sqlite:///{data_dir / 'jitvault.db'}"  # the default place
        done = run_cli(*args, env=cli_env())
        assert done.returncode == 0, done.stderr
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in done.stdout.splitlines()
            if line.startswith("export JITVAULT_")
        )
        assert exports["JITVAULT_ADDR"] == f"http://127.0.0.1:{port}"
        # the defaults (6543, 2222) may be taken, e.g. by a `jitvault dev` on this machine
        use_free_proxy_ports(data_dir / "config.toml")
        proc = start_server(data_dir / "config.toml", port)
        try:
            yield Server(proc, cli_env(exports["JITVAULT_ADDR"], exports["JITVAULT_TOKEN"]), url)
        finally:
            proc.stop()


def tamper_actor(database_url: str, seq: int) -> None:
    """Edit one row behind jitvault's back, the way someone with file or DB access could."""
    if database_url.startswith("sqlite:///"):
        with closing(sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=30)) as db:
            cur = db.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = ?", (seq,))
            assert cur.rowcount == 1
            db.commit()
        return
    with psycopg.connect(database_url) as db:
        cur = db.execute("UPDATE audit_events SET actor = 'mallory' WHERE seq = %s", (seq,))
        assert cur.rowcount == 1


def test_audit_verify_list_and_export_work_and_verify_names_a_tampered_row(
    server: Server, tmp_path: Path
) -> None:
    env = server.env
    # a few more audited actions, so the log has something in the middle to tamper with
    for name in ("alice", "bob", "carol"):
        done = run_cli("user", "add", name, "--role", "requester", env=env)
        assert done.returncode == 0, done.stderr

    done = run_cli("audit", "verify", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok"), done.stdout

    done = run_cli("audit", "list", "--since", "1h", "--json", env=env)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    actions = [e["action"] for e in listed]
    assert actions[0] == "system.init"
    assert actions.count("user.created") == 4  # the admin and three more
    assert actions[-1] == "audit.verified"
    assert [e["seq"] for e in listed] == list(range(1, len(listed) + 1))

    out = tmp_path / "audit.jsonl"
    done = run_cli("audit", "export", "--format", "jsonl", "-o", str(out), env=env)
    assert done.returncode == 0, done.stderr
    lines = out.read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert len(events) == len(listed) + 1  # the export audits itself first
    assert events[-1]["action"] == "audit.exported"
    prev = GENESIS
    for e in events:
        assert e["prev_mac"] == prev, e["seq"]
        prev = e["mac"]

    bad = next(e["seq"] for e in events if e["subject"] == "user:bob")
    tamper_actor(server.database_url, bad)

    done = run_cli("audit", "verify", env=env)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert f"first bad event {bad}:" in done.stderr, done.stderr
    assert "ok" not in done.stdout

    done = run_cli("audit", "verify", "--json", env=env)
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] is False
    assert result["first_bad_seq"] == bad
    assert result["checked"] == bad - 1

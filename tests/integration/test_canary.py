"""A canary secret goes into the vault through a real server and the real CLI, and must come out
nowhere: not in CLI output, API responses, the server's debug log, any database column (except
as ciphertext in the encrypted ones), nor any file of the data directory (SQLite WAL included).

Errors are provoked with the canary in them (duplicate add, wrongly typed fields, malformed
JSON, a canary bearer token) because error paths are where secrets usually leak.
"""

from __future__ import annotations

import base64
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import inspect, select, text

from jitvault.storage import Database
from jitvault.storage.tables import ENCRYPTED_COLUMNS
from tests.support import ServerProcess, cli_env, free_port, init_data_dir, run_cli, start_server


def forms_of(canary: str) -> list[bytes]:
    """The canary as bytes, in the case-folded and encoded forms a leak could take."""
    raw = canary.encode()
    found = {raw, canary.lower().encode(), canary.upper().encode(), raw.hex().encode()}
    for pad in range(3):  # base64 of the canary at each alignment inside a larger blob
        n = pad + len(raw)
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            blob = encode(b"\0" * pad + raw)
            found.add(blob[4 if pad else 0 : 4 * (n // 3)])
    assert all(len(f) >= 32 for f in found)
    return sorted(found)


@dataclass
class Leaks:
    """Everything a caller or operator can see, to be searched for the canary."""

    canary: str
    seen: list[tuple[str, bytes]] = field(default_factory=list)

    def add(self, where: str, data: str | bytes) -> None:
        self.seen.append((where, data.encode() if isinstance(data, str) else data))

    def cli(self, where: str, done: subprocess.CompletedProcess[str]) -> None:
        self.add(f"{where}: stdout", done.stdout)
        self.add(f"{where}: stderr", done.stderr)

    def http(self, where: str, resp: httpx.Response) -> None:
        self.add(f"{where}: body", resp.content)
        self.add(f"{where}: headers", repr(dict(resp.headers)))

    def found(self) -> list[str]:
        forms = forms_of(self.canary)
        return [where for where, data in self.seen if any(f in data for f in forms)]


@dataclass
class Node:
    server: ServerProcess
    data: Path
    database_url: str
    env: dict[str, str]


@pytest.fixture
def canary() -> str:
    return "cnry-" + secrets.token_urlsafe(30)


@pytest.fixture
def node(tmp_path: Path, database_url: str) -> Iterator[Node]:
    """``jitvault init`` then ``jitvault server`` at debug level, on loopback."""
    data = tmp_path / "node"
    port = free_port()
    default = database_url.startswith("sqlite")
    token = init_data_dir(data, port, None if default else database_url)
    server = start_server(
        data / "config.toml", port, env=cli_env(**{"JITVAULT_LOG_LEVEL": "debug"})
    )
    url = database_url if not database_url.startswith("sqlite") else f"sqlite:///{data}/jitvault.db"
    try:
        yield Node(server, data, url, cli_env(server.addr, token))
    finally:
        server.stop()


def dump_database(url: str) -> Iterator[tuple[str, str, Any]]:
    """(table, column, value) of every cell of every table."""
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            for table in inspect(conn).get_table_names():
                result = conn.execute(select(text("*")).select_from(text(f'"{table}"')))
                columns = list(result.keys())
                for row in result:
                    for column, value in zip(columns, row, strict=True):
                        yield table, column, value
    finally:
        db.dispose()


def as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


def files_under(root: Path) -> Iterator[tuple[Path, bytes]]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path, path.read_bytes()


def test_a_canary_secret_never_leaves_the_vault_in_any_form(node: Node, canary: str) -> None:
    leaks = Leaks(canary)
    env, addr = node.env, node.server.addr
    line = canary + "\n"

    def cli(*args: str, stdin: str | None = None, code: int = 0) -> str:
        done = run_cli(*args, env=env, stdin=stdin)
        leaks.cli("jitvault " + " ".join(args), done)
        assert done.returncode == code, (args, done.returncode, done.stderr)
        return done.stdout

    # --- in: a target admin password and an account password, on standard input ---------------
    cli(
        "target", "add", "postgres", "db1", "--host", "127.0.0.1", "--port", "5432",
        "--admin-user", "postgres", "--admin-password-stdin", "--json", stdin=line,
    )  # fmt: skip
    cli("account", "add", "db1", "svc", "--password-stdin", "--json", stdin=line)
    cli("account", "add", "db1", "svc2", "--password-stdin", stdin=line)
    cli("account", "set-secret", "db1/svc2", stdin=line)
    cli("user", "add", "carol", "--role", "requester", "--password-stdin", stdin=line)

    # --- out: every way of looking at them ------------------------------------------------------
    cli("account", "list", "--json")
    cli("account", "list")
    cli("account", "list", "--target", "db1", "--json")
    shown = cli("account", "show", "db1/svc", "--json")
    assert '"has_secret": true' in shown
    cli("account", "show", "db1", "svc2")
    assert '"has_admin_secret": true' in cli("target", "show", "db1", "--json")
    cli("target", "list", "--json")
    cli("user", "show", "carol", "--json")

    # --- errors with the canary in them ---------------------------------------------------------
    cli("account", "add", "db1", "svc", "--password-stdin", stdin=line, code=6)  # 409
    cli("target", "add", "postgres", "db1", "--host", "127.0.0.1",
        "--admin-password-stdin", stdin=line, code=6)  # fmt: skip
    cli("target", "add", "nosuchkind", "db9", "--host", "127.0.0.1",
        "--admin-password-stdin", stdin=line, code=5)  # fmt: skip
    cli("account", "set-secret", "db1/nobody", stdin=line, code=5)  # 404
    cli("login", "nobody", stdin=line, code=3)  # wrong user, canary as password
    done = run_cli("whoami", env=env | {"JITVAULT_TOKEN": canary})
    leaks.cli("whoami with the canary as token", done)
    assert done.returncode == 3, done.stderr

    with httpx.Client(base_url=addr, timeout=30) as http:
        admin = {"Authorization": f"Bearer {env['JITVAULT_TOKEN']}"}

        def call(where: str, method: str, url: str, status: int, **kw: Any) -> httpx.Response:
            resp = http.request(method, url, **kw)
            leaks.http(where, resp)
            assert resp.status_code == status, (where, resp.status_code, resp.text)
            return resp

        typed = {"username": 1, "password": {"x": canary}}
        call("typed account", "POST", "/v1/targets/db1/accounts", 422, json=typed, headers=admin)
        call("typed login", "POST", "/v1/auth/login", 422, json=typed)
        call("typed user", "POST", "/v1/users", 422, headers=admin,
             json={"name": ["carol"], "role": "requester", "password": [canary]})  # fmt: skip
        call("typed target", "POST", "/v1/targets", 422, headers=admin,
             json={"name": "db2", "kind": "postgres", "options": {"host": "127.0.0.1"},
                   "admin_password": {canary: canary}})  # fmt: skip
        call("typed secret", "PUT", "/v1/targets/db1/accounts/svc/secret", 422, headers=admin,
             json={"password": [canary, 1]})  # fmt: skip
        malformed = ('{"username": "svc3", "password": "' + canary).encode()
        call("malformed json", "POST", "/v1/targets/db1/accounts", 422, content=malformed,
             headers=admin | {"Content-Type": "application/json"})  # fmt: skip
        call("short password", "POST", "/v1/users", 422, headers=admin,
             json={"name": "dave", "role": "requester", "password": canary[:8]})  # fmt: skip
        call("bearer canary", "GET", "/v1/auth/whoami", 401,
             headers={"Authorization": f"Bearer {canary}"})  # fmt: skip
        call("header canary", "GET", "/v1/accounts", 401, headers={"X-Jitvault-Token": canary})
        forged = f"jvt_0123456789abcdef_{canary[:43].ljust(43, 'x')}"
        call("token-shaped canary", "GET", "/v1/accounts", 401,
             headers={"Authorization": f"Bearer {forged}"})  # fmt: skip
        call("login as carol", "POST", "/v1/auth/login", 200,
             json={"username": "CAROL", "password": canary})  # fmt: skip
        call("login as ghost", "POST", "/v1/auth/login", 401,
             json={"username": "ghost", "password": canary})  # fmt: skip
        call("login wrong password", "POST", "/v1/auth/login", 401,
             json={"username": "carol", "password": canary + "x"})  # fmt: skip

        # --- key rotation re-encrypts every secret; the audit log is read back whole ------------
        cli("operator", "rotate-key", "--json")
        rekey = cli("operator", "rekey-status", "--json")
        assert '"done": true' in rekey, rekey
        cli("audit", "verify")
        exported = cli("audit", "export")
        assert "account.created" in exported
        assert "auth.failed" in exported
        cli("audit", "list", "--json", "--limit", "1000")
        call("events", "GET", "/v1/audit/events", 200, headers=admin)
        call("users", "GET", "/v1/users", 200, headers=admin)
        call("openapi", "GET", "/openapi.json", 200)

        # the data directory while the server runs (SQLite WAL not yet checkpointed)
        for path, data in files_under(node.data):
            leaks.add(f"file while running: {path.name}", data)

    node.server.stop()
    log = node.server.log.read_text()
    assert " DEBUG " in log, "the server must have run at debug level"
    for path, data in files_under(node.data):
        leaks.add(f"file after stop: {path.name}", data)

    # --- the database, cell by cell ---------------------------------------------------------------
    encrypted = {(c.table.name, c.column) for c in ENCRYPTED_COLUMNS}
    sealed_values = []
    for table, column, value in dump_database(node.database_url):
        if value is None:
            continue
        if (table, column) in encrypted:
            assert as_bytes(value).startswith(b"jv1:"), (table, column)
            sealed_values.append((table, column))
        leaks.add(f"database {table}.{column}", as_bytes(value))
    # the secrets really went in (so the search above had something to miss)
    assert sealed_values.count(("accounts", "secret")) == 2
    assert sealed_values.count(("targets", "admin_secret")) == 1

    assert len(leaks.seen) > 100
    assert not leaks.found(), f"the canary leaked into: {leaks.found()}"


def test_the_canary_search_finds_each_form_it_claims_to(canary: str) -> None:
    """The detector itself: plain, case-folded, hex and base64 at any alignment are caught."""
    leaks = Leaks(canary)
    leaks.add("plain", f"xx{canary}yy")
    leaks.add("folded", canary.lower())
    leaks.add("hex", canary.encode().hex())
    for pad in range(3):
        leaks.add(f"b64+{pad}", base64.b64encode(b"z" * pad + canary.encode() + b"tail"))
        leaks.add(f"b64url+{pad}", base64.urlsafe_b64encode(b"q" * pad + canary.encode()))
    leaks.add("clean", "nothing to see here")
    assert len(leaks.found()) == len(leaks.seen) - 1
    assert "clean" not in leaks.found()

"""The ``jitvault`` command end to end, as a user runs it: real processes, real HTTP, a shell.

One ``jitvault dev`` server is shared by the module (started as a subprocess in its own session,
stopped by pid); tests that need a restart or another data directory start their own.
"""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import typer

from jitvault.cli.main import app
from tests.support import (
    JITVAULT,
    VENV_BIN,
    ServerProcess,
    cli_env,
    free_port,
    init_data_dir,
    run_cli,
    use_free_proxy_ports,
    wait_http,
)

ADMIN_PASSWORD = "vault-admin-pw-Ω-7f3a"
OWNER_PASSWORD = "app-owner-pw-Ж-91c2"
TOKEN_RE = re.compile(r"^jvt_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$")

EXIT_INVALID = 2
EXIT_UNAUTHENTICATED = 3
EXIT_FORBIDDEN = 4
EXIT_NOT_FOUND = 5
EXIT_CONFLICT = 6
EXIT_UNAVAILABLE = 7


# --------------------------------------------------------------------------- helpers


@dataclass
class DevServer:
    """A running ``jitvault dev`` and what it printed."""

    server: ServerProcess
    port: int
    stdout_file: Path
    exports: dict[str, str] = field(default_factory=dict)

    @property
    def addr(self) -> str:
        return self.exports["JITVAULT_ADDR"]

    @property
    def token(self) -> str:
        return self.exports["JITVAULT_TOKEN"]

    @property
    def lines(self) -> list[str]:
        return self.stdout_file.read_text().splitlines()

    def env(self, token: str | None = None) -> dict[str, str]:
        return cli_env(self.addr, token or self.token)

    def stop(self) -> None:
        self.server.stop()


def parse_exports(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.splitlines():
        m = re.fullmatch(r"export (JITVAULT_[A-Z_]+)=(\S+)", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


def spawn(args: list[str], log_dir: Path, name: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """``jitvault ARGS`` in the background, in a new session; stdout and stderr to files."""
    out, err = log_dir / f"{name}.out", log_dir / f"{name}.err"
    # the proxies on free ports: a server refuses to start when one of its ports is taken
    env = cli_env(
        JITVAULT_SERVER__PG_PROXY_PORT=str(free_port()),
        JITVAULT_SERVER__SSH_PROXY_PORT=str(free_port()),
    )
    with out.open("wb") as fo, err.open("wb") as fe:
        proc = subprocess.Popen(
            [JITVAULT, *args], stdout=fo, stderr=fe, env=env, start_new_session=True
        )
    return proc, out, err


def start_dev(data_dir: Path, port: int, log_dir: Path, name: str) -> DevServer:
    proc, out, err = spawn(["dev", "--data-dir", str(data_dir), "--port", str(port)], log_dir, name)
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", data_dir, err)
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/sys/health")
    except TimeoutError:
        server.stop()
        raise RuntimeError(f"jitvault dev did not start:\n{err.read_text()[-3000:]}") from None
    # the exports are printed (and flushed) before the server starts answering
    dev = DevServer(server, port, out)
    dev.exports = parse_exports(out.read_text())
    return dev


def cli(
    *args: str, env: dict[str, str], stdin: str | None = None, code: int = 0
) -> subprocess.CompletedProcess[str]:
    """Run the CLI; check the exit code, and that a failure is one clean line on stderr."""
    res = run_cli(*args, env=env, stdin=stdin)
    assert res.returncode == code, (args, res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    assert "Traceback" not in res.stdout, res.stdout
    if code != 0:
        lines = res.stderr.splitlines()
        assert len(lines) == 1, f"error is not one line: {res.stderr!r}"
        assert lines[0].startswith("error: "), lines
    return res


def cli_json(*args: str, env: dict[str, str], stdin: str | None = None) -> object:
    res = cli(*args, "--json", env=env, stdin=stdin)
    return json.loads(res.stdout)


def all_keys(data: object) -> set[str]:
    if isinstance(data, dict):
        keys = set(data)
        for v in data.values():
            keys |= all_keys(v)
        return keys
    if isinstance(data, list):
        return set().union(*(all_keys(v) for v in data)) if data else set()
    return set()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    base = tmp_path_factory.mktemp("dev")
    server = start_dev(base / "data", free_port(), base, "dev-1")
    try:
        yield server
    finally:
        server.stop()
    # nothing the CLI sent made the server fail: every error above was an answer, not a crash
    log = (base / "dev-1.err").read_text()
    assert "Traceback" not in log, log[-3000:]


# --------------------------------------------------------------------------- jitvault dev


def test_dev_prints_exports_that_a_shell_can_eval_then_psql_and_ssh_hints(
    dev: DevServer,
) -> None:
    lines = dev.lines
    assert lines[0] == f"export JITVAULT_ADDR=http://127.0.0.1:{dev.port}"
    assert lines[1].startswith("export JITVAULT_TOKEN=")
    assert TOKEN_RE.match(dev.token)
    rest = "\n".join(lines[2:])
    assert "psql" in rest
    assert "ssh" in rest

    env = cli_env(PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    res = subprocess.run(
        ["bash", "-c", 'eval "$(head -2 "$1")"; jitvault whoami --json', "sh", dev.stdout_file],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    who = json.loads(res.stdout)
    assert who["name"] == "admin"
    assert who["role"] == "admin"


def test_dev_data_dir_holds_config_database_and_root_key_for_the_owner_only(
    dev: DevServer,
) -> None:
    d = dev.server.data_dir
    for name in ("config.toml", "jitvault.db", "root.key"):
        assert (d / name).is_file(), name
        assert mode(d / name) == 0o600, (name, oct(mode(d / name)))
    assert mode(d) == 0o700


def test_dev_on_a_port_in_use_fails_with_one_line_and_nonzero_exit(
    dev: DevServer, tmp_path: Path
) -> None:
    res = cli("dev", "--data-dir", str(tmp_path / "other"), "--port", str(dev.port),
              env=cli_env(), code=EXIT_UNAVAILABLE)  # fmt: skip
    assert str(dev.port) in res.stderr
    assert "in use" in res.stderr


@pytest.mark.parametrize(
    ("setting", "what"),
    [("PG_PROXY_PORT", "PostgreSQL proxy"), ("SSH_PROXY_PORT", "SSH proxy")],
)
def test_a_taken_proxy_port_stops_the_server_instead_of_running_without_the_proxy(
    tmp_path: Path, setting: str, what: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = cli_env(**{f"JITVAULT_SERVER__{setting}": str(port)})
        res = cli("dev", "--data-dir", str(tmp_path / "d"), "--port", str(free_port()),
                  env=env, code=EXIT_UNAVAILABLE)  # fmt: skip
    assert f"the {what} port {port} on 127.0.0.1 is in use" in res.stderr


def test_dev_again_on_the_same_dir_keeps_the_data_and_prints_a_new_working_token(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    first = start_dev(data, free_port(), tmp_path, "first")
    try:
        cli("target", "add", "postgres", "pg-keep", "--host", "127.0.0.1", "--admin-user", "a",
            "--admin-password-stdin", env=first.env(), stdin=ADMIN_PASSWORD + "\n")  # fmt: skip
        key_before = (data / "root.key").read_bytes()
        config_before = (data / "config.toml").read_text()
    finally:
        first.stop()

    second = start_dev(data, free_port(), tmp_path, "second")
    try:
        assert "initialized" not in (tmp_path / "second.err").read_text()
        assert second.token != first.token
        assert TOKEN_RE.match(second.token)
        assert second.addr == f"http://127.0.0.1:{second.port}"
        who = cli_json("whoami", env=second.env())
        assert who["name"] == "admin"
        targets = cli_json("target", "list", env=second.env())
        assert isinstance(targets, list)
        assert [t["name"] for t in targets] == ["pg-keep"]
        assert targets[0]["has_admin_secret"] is True
        assert (data / "root.key").read_bytes() == key_before
        assert (data / "config.toml").read_text() == config_before
        # one live dev token at a time: the first run's token no longer works
        stale = run_cli("whoami", env=cli_env(second.addr, first.token))
        assert stale.returncode == 3, stale.stderr
    finally:
        second.stop()


# --------------------------------------------------------------------------- init + server


def test_init_prints_exports_server_serves_from_config_and_second_init_conflicts(
    tmp_path: Path, db_kind: str, database_url: str
) -> None:
    data, port = tmp_path / "data", free_port()
    extra = ["--database-url", database_url] if db_kind == "postgres" else []
    res = cli("init", "--data-dir", str(data), "--port", str(port), *extra, env=cli_env())
    exports = parse_exports(res.stdout)
    assert res.stdout.splitlines()[:2] == [
        f"export JITVAULT_ADDR=http://127.0.0.1:{port}",
        f"export JITVAULT_TOKEN={exports['JITVAULT_TOKEN']}",
    ]
    assert TOKEN_RE.match(exports["JITVAULT_TOKEN"])
    assert mode(data / "config.toml") == 0o600
    assert mode(data / "root.key") == 0o600

    # the port comes from the config file: no --port here
    proc, _, err = spawn(["server", "--config", str(data / "config.toml")], tmp_path, "server")
    server = ServerProcess(proc, exports["JITVAULT_ADDR"], data, err)
    try:
        wait_http(f"{server.addr}/v1/sys/health")
        env = cli_env(exports["JITVAULT_ADDR"], exports["JITVAULT_TOKEN"])
        assert cli_json("whoami", env=env)["role"] == "admin"

        again = cli("init", "--data-dir", str(data), env=cli_env(), code=EXIT_CONFLICT)
        assert "already initialized" in again.stderr
        assert again.stdout == ""
        # the running server is untouched by the refused init
        assert cli_json("whoami", env=env)["name"] == "admin"
    finally:
        server.stop()


def _open_files_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files limit")


def test_server_raises_its_open_files_soft_limit_to_the_hard_limit(tmp_path: Path) -> None:
    # a proxy holds two sockets a session: a soft limit of 1024 would cap it near 500
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("the hard limit on open files is too low to tell")
    data, port = tmp_path / "data", free_port()
    init_data_dir(data, port)
    use_free_proxy_ports(data / "config.toml")
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [JITVAULT, "server", "--config", str(data / "config.toml")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=cli_env(),
        start_new_session=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
    )
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", data, tmp_path / "server.log")
    try:
        wait_http(f"{server.addr}/v1/sys/health")
        assert _open_files_limits(proc.pid) == (hard, hard)
    finally:
        server.stop()
        log.close()


def test_server_with_a_missing_config_fails_with_one_line(tmp_path: Path) -> None:
    res = cli("server", "--config", str(tmp_path / "nope" / "config.toml"), env=cli_env(),
              code=EXIT_INVALID)  # fmt: skip
    assert "does not exist" in res.stderr


# --------------------------------------------------------------------------- the user flow


def test_user_flow_from_the_issue_through_the_real_cli_never_shows_a_secret(
    dev: DevServer,
) -> None:
    env = dev.env()
    outputs: list[str] = []

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        res = cli(*args, env=env, stdin=stdin)
        outputs.extend((res.stdout, res.stderr))
        return res

    # a requester in group dba, with a token printed once
    run("user", "add", "alice", "--role", "requester", "--group", "dba")
    res = run("token", "create", "alice")
    alice_token = res.stdout.strip()
    assert TOKEN_RE.match(alice_token), res.stdout
    assert "once" in res.stderr
    who = cli_json("whoami", env=dev.env(alice_token))
    assert (who["name"], who["role"], who["groups"]) == ("alice", "requester", ["dba"])
    assert alice_token not in json.dumps(cli_json("token", "list", "alice", env=env))

    # a target and an injected account; secrets go in on stdin only
    run("target", "add", "postgres", "pg-prod", "--host", "127.0.0.1", "--port", "5433",
        "--dbname", "app", "--admin-user", "vault_admin", "--admin-password-stdin",
        stdin=ADMIN_PASSWORD + "\n")  # fmt: skip
    run("account", "add", "pg-prod", "app_owner", "--password-stdin", "--mode", "injected",
        stdin=OWNER_PASSWORD + "\n")  # fmt: skip
    table = run("account", "list").stdout
    assert "pg-prod" in table
    assert "app_owner" in table

    accounts = cli_json("account", "list", env=env)
    account = cli_json("account", "show", "pg-prod/app_owner", env=env)
    assert isinstance(account, dict)
    assert account in accounts
    assert (account["target"], account["username"], account["mode"]) == (
        "pg-prod",
        "app_owner",
        "injected",
    )
    assert account["has_secret"] is True
    target = cli_json("target", "show", "pg-prod", env=env)
    for shown in (account, accounts, target):
        keys = all_keys(shown)
        assert not keys & {"secret", "password", "admin_password", "ciphertext", "envelope"}
        outputs.append(json.dumps(shown))

    # operator: seal status, key rotation with progress, to the end
    seal = cli_json("operator", "seal-status", env=env)
    assert (seal["initialized"], seal["sealed"], seal["provider"]) == (True, False, "file")
    term_before = seal["active_term"]
    res = run("operator", "rotate-key", "--json")
    rekey = json.loads(res.stdout)
    assert rekey["done"] is True
    assert rekey["remaining"] == 0
    assert rekey["active_term"] == term_before + 1
    assert "re-encrypting" in res.stderr  # the progress bar
    assert cli_json("operator", "seal-status", env=env)["active_term"] == term_before + 1
    # the vaulted secrets survived the rotation: the account still has one
    assert cli_json("account", "show", "pg-prod", "app_owner", env=env)["has_secret"] is True

    # audit: the chain verifies, and every step above is in it
    verified = run("audit", "verify").stdout
    assert verified.startswith("ok: ")
    assert cli_json("audit", "verify", env=env)["ok"] is True
    events = cli_json("audit", "list", "--since", "1h", env=env)
    assert isinstance(events, list)
    actions = {e["action"] for e in events}
    assert {"user.created", "token.created"} <= actions
    assert any("pg-prod" in (e["subject"] or "") for e in events)
    exported = run("audit", "export", "--format", "jsonl").stdout.splitlines()
    rows = [json.loads(line) for line in exported]
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    assert {r["seq"] for r in events} <= {r["seq"] for r in rows}
    assert all(r["mac"] for r in rows)

    # no output of any command, and no byte at rest, holds a vaulted password
    everything = "\n".join(outputs)
    for secret in (ADMIN_PASSWORD, OWNER_PASSWORD):
        assert secret not in everything
        for name in ("jitvault.db", "jitvault.db-wal"):
            path = dev.server.data_dir / name
            if path.exists():
                assert secret.encode() not in path.read_bytes(), name


def test_every_data_command_prints_valid_json_with_the_json_flag(dev: DevServer) -> None:
    env = dev.env()
    cli_json("user", "add", "jason", "--role", "approver", "--group", "ops", env=env)
    cli_json("target", "add", "postgres", "pg-json", "--host", "127.0.0.1", "--admin-user",
             "a", "--admin-password-stdin", env=env, stdin=ADMIN_PASSWORD + "\n")  # fmt: skip
    cli_json("account", "add", "pg-json", "owner", "--password-stdin", env=env,
             stdin=OWNER_PASSWORD + "\n")  # fmt: skip
    created = cli_json("token", "create", "jason", "--description", "ci", env=env)
    assert isinstance(created, dict)
    assert TOKEN_RE.match(str(created["token"]))
    commands: list[tuple[str, ...]] = [
        ("whoami",),
        ("user", "list"),
        ("user", "show", "jason"),
        ("token", "list", "jason"),
        ("target", "list"),
        ("target", "show", "pg-json"),
        ("account", "list"),
        ("account", "list", "--target", "pg-json"),
        ("account", "show", "pg-json/owner"),
        ("operator", "seal-status"),
        ("operator", "rekey-status"),
        ("audit", "list", "--since", "1h", "--limit", "5"),
        ("audit", "verify"),
    ]
    # read-only and independent: run side by side to keep the file quick
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda args: cli_json(*args, env=env), commands))
    for args, data in zip(commands, results, strict=True):
        assert isinstance(data, dict | list), args
    set_secret = run_cli("account", "set-secret", "pg-json/owner", "--json", env=env,
                         stdin="new-pw-123\n")  # fmt: skip
    assert set_secret.returncode == 0, set_secret.stderr
    assert isinstance(json.loads(set_secret.stdout), dict)
    assert "new-pw-123" not in set_secret.stdout


def test_text_someone_else_typed_is_printed_as_text_not_markup_or_terminal_controls(
    dev: DevServer,
) -> None:
    """A token's description is its owner's text, shown to admins in tables and records: rich
    markup in it is printed as it is (a stray closing tag used to crash every listing), and
    terminal controls escaped (an ESC sequence or a CR rewrites what the reader sees)."""
    env = dev.env()
    cli_json("user", "add", "mallory", "--role", "requester", env=env)
    hostile = "[/x][b]ok[/b]\x1b[2K\r\u202e"
    created = cli_json("token", "create", "mallory", "--description", hostile, env=env)
    assert isinstance(created, dict)
    listed = cli("token", "list", "mallory", env={**env, "COLUMNS": "200"}).stdout
    assert "[/x][b]ok[/b]" in listed, listed
    assert "\\x1b[2K\\r\\u202e" in listed, listed
    assert not any(c in listed for c in "\x1b\r\u202e"), listed
    as_json = cli_json("token", "list", "mallory", env=env)
    assert isinstance(as_json, list)
    assert [t["description"] for t in as_json] == [hostile]  # --json: as it was typed


def test_a_message_on_stderr_shows_a_path_as_it_is_not_as_markup(
    dev: DevServer, tmp_path: Path
) -> None:
    """What a command reports on stderr goes through the same rule: a file name with brackets
    is shown as it is (rich used to read "[b]" as bold and drop it from the name it showed),
    and a control in it escaped."""
    output = tmp_path / "audit-[b]2026\x1b[2K.jsonl"
    res = cli("audit", "export", "--output", str(output), env=dev.env())
    assert output.read_text().strip()
    assert res.stderr.endswith(f"to {tmp_path}/audit-[b]2026\\x1b[2K.jsonl\n"), res.stderr
    assert "\x1b" not in res.stderr


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every leaf command of the click tree (typer ships its own click: duck-typed)."""
    sub = getattr(cmd, "commands", None)
    if sub is None:
        yield path, cmd
        return
    for name, child in sub.items():
        yield from _commands(child, (*path, name))


_ROOT: Any = typer.main.get_command(app)
GROUPS = sorted(name for name, cmd in _ROOT.commands.items() if hasattr(cmd, "commands"))

# commands that show no data record: they serve, print export lines, a stream or a message
NO_JSON = {
    ("dev",),
    ("init",),
    ("server",),
    ("login",),
    ("version",),
    ("token", "revoke"),
    ("user", "key", "remove"),  # like token revoke: a DELETE that answers 204, nothing to show
    ("audit", "export"),
    ("operator", "reencrypt"),
}


def test_every_command_but_the_listed_few_has_a_json_flag() -> None:
    leaves = dict(_commands(_ROOT))
    assert ("account", "show") in leaves
    assert set(leaves) >= NO_JSON
    missing = [
        " ".join(path)
        for path, cmd in leaves.items()
        if path not in NO_JSON and not any("--json" in getattr(p, "opts", ()) for p in cmd.params)
    ]
    assert missing == []


# --------------------------------------------------------------------------- errors


def test_errors_are_one_line_with_the_documented_exit_codes(dev: DevServer) -> None:
    env = dev.env()
    cli("user", "add", "rita", "--role", "requester", env=env)
    rita = cli("token", "create", "rita", env=env).stdout.strip()
    cli("target", "add", "postgres", "pg-err", "--host", "127.0.0.1", env=env)

    # wrong token, and a missing one -> 3
    bad = "jvt_0123456789abcdef_" + "A" * 43
    res = cli("whoami", env=dev.env(bad), code=EXIT_UNAUTHENTICATED)
    assert bad not in res.stderr
    cli("whoami", env=cli_env(dev.addr), code=EXIT_UNAUTHENTICATED)
    # a requester may not create users -> 4
    res = cli("user", "add", "mallory", "--role", "admin", env=dev.env(rita), code=EXIT_FORBIDDEN)
    assert "requester" in res.stderr
    # an account that does not exist -> 5
    res = cli("account", "show", "pg-err/nope", env=env, code=EXIT_NOT_FOUND)
    assert "pg-err/nope" in res.stderr
    cli("target", "show", "nope", env=env, code=EXIT_NOT_FOUND)
    # a duplicate user -> 6
    res = cli("user", "add", "rita", "--role", "requester", env=env, code=EXIT_CONFLICT)
    assert "rita" in res.stderr
    # bad input -> 2
    cli("user", "add", "wiz", "--role", "wizard", env=env, code=EXIT_INVALID)
    cli("account", "show", "no-slash", env=env, code=EXIT_INVALID)
    cli("audit", "list", "--since", "yesterday-ish", env=env, code=EXIT_INVALID)
    cli("account", "add", "pg-err", "x", "--password-stdin", env=env, stdin="", code=EXIT_INVALID)


def test_a_server_that_cannot_be_reached_gives_exit_7_and_says_so(dev: DevServer) -> None:
    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
        env = cli_env(closed, dev.token)
        for args in (("whoami",), ("user", "list", "--json"), ("audit", "export")):
            res = cli(*args, env=env, code=EXIT_UNAVAILABLE)
            assert "cannot reach" in res.stderr
            assert closed in res.stderr
            assert res.stdout == ""


def test_a_connection_that_breaks_after_the_request_says_it_may_have_been_done(
    dev: DevServer,
) -> None:
    """A server that dies between reading a request and answering (a crash, a kill) may have
    done what was asked: the CLI must not say "is the server running?" as if nothing happened."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        addr = f"http://127.0.0.1:{listener.getsockname()[1]}"

        def read_then_hang_up() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                conn.recv(65536)  # the whole request, then close without a word

        reader = threading.Thread(target=read_then_hang_up, daemon=True)
        reader.start()
        res = cli(
            "request", "create", "--target", "t", "--account", "a", "--duration", "5m",
            "--reason", "INC-1", env=cli_env(addr, dev.token), code=EXIT_UNAVAILABLE,
        )  # fmt: skip
        reader.join(10)
    assert "broke before it answered" in res.stderr
    assert "may or may not have been done" in res.stderr
    assert "cannot reach" not in res.stderr
    assert res.stdout == ""


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    "args",
    [(), *((g,) for g in GROUPS), ("dev",), ("init",), ("server",)],
    ids=lambda a: " ".join(a) or "jitvault",
)
def test_help_exits_zero(args: tuple[str, ...]) -> None:
    res = cli(*args, "--help", env=cli_env())
    assert "Usage:" in res.stdout

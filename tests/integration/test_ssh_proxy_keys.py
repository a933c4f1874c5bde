"""The SSH session proxy's key login, end to end: users register public keys with the real CLI
(``jitvault user key add/list/remove``), then log in with OpenSSH's ``ssh -i KEY`` and with
paramiko as ``<account>.<grant id>``, through a real ``jitvault server`` to the tests' own sshd.
The key is never authorized on the target: the proxy logs in there with the vaulted password.
jitvault's own store is SQLite or PostgreSQL per ``--db``.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import paramiko
import pytest
from sqlalchemy import update

from jitvault.storage import tables as t
from tests.ssh_clients import SSH_OPTIONS, dest
from tests.sshd import SshdServer
from tests.support import add_requester, run_cli, wait_port
from tests.world import ServerWorld, race, server_world, until

TARGET = "keyweb1"
#: the same sshd, under a name whose policy rule allows one connection per grant
TARGET_ONE = "keyweb1one"


@dataclass
class KeyWorld(ServerWorld):
    """The server world with the tests' sshd as two targets; alice and bob request."""

    sshd: SshdServer
    bob_env: dict[str, str] | None = None


@pytest.fixture(scope="module")
def world(
    db_kind: str, tmp_path_factory: pytest.TempPathFactory, sshd_server: SshdServer
) -> Iterator[KeyWorld]:
    tmp = tmp_path_factory.mktemp("sshkeys")
    with server_world(KeyWorld, db_kind, tmp, "alice", sshd=sshd_server) as w:
        for name in (TARGET, TARGET_ONE):
            add = run_cli(
                "target", "add", "ssh", name, "--host", sshd_server.host,
                "--port", str(sshd_server.port),
                "--option", f"host_key={sshd_server.host_key_line}", env=w.admin_env,
            )  # fmt: skip
            assert add.returncode == 0, add.stdout + add.stderr
        w.policy(
            "rules:\n"
            f"  - name: ssh-keys\n    match: {{targets: [{TARGET}]}}\n"
            "    auto_approve: true\n"
            f"  - name: ssh-keys-one\n    match: {{targets: [{TARGET_ONE}]}}\n"
            "    auto_approve: true\n    max_connections: 1\n"
        )
        w.bob_env = add_requester(w.admin_env, w.server.addr, "bob")
        wait_port(w.ssh_port, what="the SSH proxy")
        yield w


@dataclass
class Access:
    account: str
    password: str
    request_id: int
    grant_id: int

    @property
    def login(self) -> str:
        return f"{self.account}.{self.grant_id}"


def _access(
    world: KeyWorld,
    env: dict[str, str] | None = None,
    target: str = TARGET,
    duration: str = "10m",
) -> Access:
    """A fresh Linux user with a password only the vault knows, and a grant of it."""
    password = secrets.token_urlsafe(18)
    account = world.sshd.add_user(password=password)
    acc = run_cli(
        "account", "add", target, account, "--password-stdin",
        env=world.admin_env, stdin=password + "\n",
    )  # fmt: skip
    assert acc.returncode == 0, acc.stderr
    r = world.cli(
        "request", "create", "--target", target, "--account", account, "--duration", duration,
        "--reason", "INC-8 key login", env=env or world.user_env,
    )  # fmt: skip
    assert r["state"] == "active", r
    return Access(account, password, r["id"], r["grant_id"])


def _keypair(world: KeyWorld, kind: str = "ed25519") -> Path:
    """A new key pair of ssh-keygen's; the private key's path (the public one: + .pub)."""
    path = world.tmp / f"id_{kind}_{secrets.token_hex(4)}"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "test key", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def _register(world: KeyWorld, key: Path, env: dict[str, str] | None = None) -> str:
    """``jitvault user key add KEY.pub``; the fingerprint it registered."""
    added = world.cli("user", "key", "add", f"{key}.pub", env=env or world.user_env)
    fingerprint: str = added["fingerprint"]
    return fingerprint


def _ssh_args(world: KeyWorld, key: Path, login: str, *command: str) -> list[str]:
    """OpenSSH with this key only (no agent, no password prompt)."""
    return [
        "ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", "PreferredAuthentications=publickey",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=15",
        "-p", str(world.ssh_port), f"{login}@127.0.0.1", *command,
    ]  # fmt: skip


#: the requirement is 2 s; the assertion leaves room for a loaded CI machine
CUT_BOUND_SECONDS = 5.0

_NO_AGENT = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}


def _ssh(world: KeyWorld, key: Path, login: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _ssh_args(world, key, login, *command),
        capture_output=True, text=True, env=_NO_AGENT, timeout=60, check=False,
    )  # fmt: skip


def _paramiko(world: KeyWorld, key: Path, login: str) -> paramiko.Transport:
    """A paramiko transport logged in with ``key``."""
    transport = paramiko.Transport(socket.create_connection(("127.0.0.1", world.ssh_port), 15))
    try:
        transport.start_client(timeout=15)
        transport.auth_publickey(login, paramiko.Ed25519Key.from_private_key_file(str(key)))
    except BaseException:
        transport.close()
        raise
    return transport


def _exec(transport: paramiko.Transport, command: str) -> tuple[int, bytes]:
    chan = transport.open_session(timeout=15)
    chan.exec_command(command)
    out = chan.makefile("rb").read()
    return chan.recv_exit_status(), out


def _refused(world: KeyWorld, key: Path, login: str) -> None:
    """Both clients are refused, and told nothing but that (no hint which part was wrong)."""
    done = _ssh(world, key, login, "id -un")
    assert done.returncode == 255, done
    assert done.stdout == ""
    assert "Permission denied (publickey" in done.stderr, done.stderr
    assert "jitvault" not in done.stderr
    with pytest.raises(paramiko.AuthenticationException) as caught:
        _paramiko(world, key, login)
    assert type(caught.value) is paramiko.AuthenticationException


def _sessions_of(world: KeyWorld, grant_id: int) -> list[dict[str, Any]]:
    rows = world.cli("session", "list", env=world.admin_env)
    return [r for r in rows if r["grant_id"] == grant_id]


def _refusal_reasons(world: KeyWorld, fingerprint: str) -> list[str]:
    events = world.cli("audit", "list", "--limit", "10000", env=world.admin_env)
    return [
        e["details"]["reason"]
        for e in events
        if e["action"] == "session.refused" and e["subject"] == f"ssh_key:{fingerprint}"
    ]


# ------------------------------------------------------------------------------- getting in


def test_openssh_and_paramiko_log_in_with_a_registered_key_and_a_live_grant(
    world: KeyWorld,
) -> None:
    key = _keypair(world)
    fingerprint = _register(world, key)
    access = _access(world)
    shown = run_cli("connect", str(access.request_id), env=world.user_env)
    assert f"ssh -i KEY -p {world.ssh_port} {access.login}@" in shown.stderr, shown.stderr
    done = _ssh(world, key, access.login, "id -un; echo to-stderr >&2; exit 3")
    assert done.returncode == 3, done.stderr
    assert done.stdout == f"{access.account}\n"
    assert done.stderr.strip() == "to-stderr"
    assert access.password not in done.stdout + done.stderr
    transport = _paramiko(world, key, access.login)
    try:
        status, out = _exec(transport, "id -un")
        assert (status, out) == (0, f"{access.account}\n".encode())
        # a second channel on the same connection is the same session
        assert _exec(transport, "echo again")[1] == b"again\n"
    finally:
        transport.close()
    until(
        "both sessions ended",
        lambda: all(s["ended_at"] for s in _sessions_of(world, access.grant_id)),
    )
    rows = _sessions_of(world, access.grant_id)
    assert len(rows) == 2
    assert {r["ssh_key"] for r in rows} == {fingerprint}
    events = world.cli("audit", "list", "--limit", "10000", env=world.admin_env)
    opened = [
        e for e in events
        if e["action"] == "session.opened" and e["details"].get("grant_id") == access.grant_id
    ]  # fmt: skip
    assert len(opened) == 2, "one session per login, though asyncssh asks about the key twice"
    assert {e["details"]["ssh_key"] for e in opened} == {fingerprint}
    assert {e["actor"] for e in opened} == {"alice"}


def test_the_proxy_now_offers_publickey_beside_the_token_methods(world: KeyWorld) -> None:
    transport = paramiko.Transport(socket.create_connection(("127.0.0.1", world.ssh_port), 15))
    try:
        transport.start_client(timeout=15)
        with pytest.raises(paramiko.BadAuthenticationType) as none:
            transport.auth_none("any.1")
        assert sorted(none.value.allowed_types) == ["keyboard-interactive", "password", "publickey"]
    finally:
        transport.close()


def test_a_token_login_still_works_after_a_key_was_offered_and_refused(world: KeyWorld) -> None:
    stranger = _keypair(world)
    access = _access(world)
    info = world.cli("connect", str(access.request_id), env=world.user_env)
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    done = subprocess.run(
        [
            "sshpass", "-e", "ssh", "-i", str(stranger), "-o", "IdentitiesOnly=yes",
            "-o", "PreferredAuthentications=publickey,password",
            "-o", "NumberOfPasswordPrompts=1",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-p", str(world.ssh_port), f"{access.login}@127.0.0.1",
            "id -un",
        ],
        capture_output=True, text=True, timeout=60, check=False,
        env={**env, "SSHPASS": info["password"]},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{access.account}\n"
    # the key was offered first (and refused: it is registered to no one)
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{stranger}.pub"],
        capture_output=True, text=True, check=True,
    ).stdout.split()[1]  # fmt: skip
    assert _refusal_reasons(world, fingerprint) == ["unregistered ssh key"]


# ------------------------------------------------------------------------------- refused


def test_keys_that_do_not_fit_the_grant_are_refused_alike(world: KeyWorld) -> None:
    assert world.bob_env is not None
    alice_key, bob_key, stranger = _keypair(world), _keypair(world), _keypair(world)
    alice_fp = _register(world, alice_key)
    _register(world, bob_key, world.bob_env)
    access = _access(world)
    other = _access(world)  # alice's too: another account
    bobs = _access(world, env=world.bob_env)
    _refused(world, stranger, access.login)  # registered to no one
    _refused(world, bob_key, access.login)  # someone else's key
    _refused(world, alice_key, bobs.login)  # the key's owner is not the grant's
    _refused(world, alice_key, f"{other.account}.{access.grant_id}")  # another account
    _refused(world, alice_key, f"{access.account}.{access.grant_id + 1000}")  # no such grant
    _refused(world, alice_key, "no-grant-here")
    assert _sessions_of(world, access.grant_id) == []
    reasons = " ".join(_refusal_reasons(world, alice_fp))
    for why in ("another user", "account does not match", "no such grant"):
        assert why in reasons, reasons
    # and the right combination gets in
    assert _ssh(world, alice_key, access.login, "true").returncode == 0


def test_a_key_is_refused_once_its_grant_is_revoked_or_expired(world: KeyWorld) -> None:
    key = _keypair(world)
    _register(world, key)
    revoked = _access(world)
    assert _ssh(world, key, revoked.login, "true").returncode == 0
    world.revoke(revoked.grant_id)
    _refused(world, key, revoked.login)
    expiring = _access(world, duration="4s")
    expires = datetime.fromisoformat(world.grant(expiring.grant_id)["expires_at"])
    until("the grant expired", lambda: time.time() > expires.timestamp() + 0.5)
    _refused(world, key, expiring.login)


def test_a_removed_key_and_a_disabled_users_key_stop_working(world: KeyWorld) -> None:
    key = _keypair(world)
    fingerprint = _register(world, key)
    access = _access(world)
    assert _ssh(world, key, access.login, "true").returncode == 0
    removed = run_cli("user", "key", "remove", fingerprint, env=world.user_env)
    assert removed.returncode == 0, removed.stderr
    _refused(world, key, access.login)
    assert "unregistered ssh key" in _refusal_reasons(world, fingerprint)
    _register(world, key)  # registered again: it works again
    assert _ssh(world, key, access.login, "true").returncode == 0
    node = world.node()
    try:
        with node.db.begin() as conn:
            conn.execute(update(t.users).where(t.users.c.name == "alice").values(disabled=True))
        _refused(world, key, access.login)
        assert "the ssh key's owner is disabled" in _refusal_reasons(world, fingerprint)
    finally:
        with node.db.begin() as conn:
            conn.execute(update(t.users).where(t.users.c.name == "alice").values(disabled=False))
        node.close()
    assert _ssh(world, key, access.login, "true").returncode == 0


# ------------------------------------------------------------------------------- limits and cuts


def test_max_connections_holds_for_key_logins_one_at_a_time_and_racing(world: KeyWorld) -> None:
    key = _keypair(world)
    _register(world, key)
    access = _access(world, target=TARGET_ONE)
    held = _paramiko(world, key, access.login)
    try:
        assert _exec(held, "true")[0] == 0
        full = _ssh(world, key, access.login, "echo should-not-run")
        assert full.returncode == 255
        assert "should-not-run" not in full.stdout
        assert "allows 1 concurrent connections" in full.stderr, full.stderr
    finally:
        held.close()
    until(
        "the held session ended",
        lambda: all(s["ended_at"] for s in _sessions_of(world, access.grant_id)),
    )

    # whoever gets in holds the session until every racer is done (then the test ends it)
    holding: list[subprocess.Popen[str]] = []

    def attempt() -> str:
        proc = subprocess.Popen(
            _ssh_args(world, key, access.login, "echo in; exec sleep 120"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_NO_AGENT,
        )  # fmt: skip
        assert proc.stdout is not None
        if proc.stdout.readline() == "in\n":
            holding.append(proc)
            return "in"
        proc.communicate(timeout=60)
        return "out"

    try:
        outcomes = race(attempt, clients=8)
    finally:
        for proc in holding:
            proc.kill()
            proc.communicate(timeout=30)
    assert sorted(outcomes) == ["in"] + ["out"] * 7, outcomes


@dataclass
class Cut:
    stderr: bytes
    status: int
    #: seconds from the end of ``cut`` to the channel's exit
    took: float


def _cut_while_running(world: KeyWorld, key: Path, access: Access, cut: Any) -> Cut:
    """A paramiko key session running ``sleep``; ``cut()`` is called while it runs; what the
    client saw when the channel ended."""
    transport = _paramiko(world, key, access.login)
    out: dict[str, Any] = {}
    try:
        chan = transport.open_session(timeout=15)
        chan.exec_command("echo ready; sleep 60")
        chan.settimeout(30)
        assert chan.recv(64) == b"ready\n"

        def wait_cut() -> None:
            out["status"] = chan.recv_exit_status()

        waiter = threading.Thread(target=wait_cut, daemon=True)
        waiter.start()
        cut()
        started = time.monotonic()
        waiter.join(30)
        took = time.monotonic() - started
        assert not waiter.is_alive()
        stderr = b""
        while chan.recv_stderr_ready():
            stderr += chan.recv_stderr(4096)
    finally:
        transport.close()
    return Cut(stderr, out["status"], took)


def test_revoke_cuts_a_key_session_with_a_message(world: KeyWorld) -> None:
    key = _keypair(world)
    _register(world, key)
    access = _access(world)
    cut = _cut_while_running(world, key, access, lambda: world.revoke(access.grant_id))
    assert b"jitvault: access grant revoked" in cut.stderr
    assert cut.status == 255


def _token_session(world: KeyWorld, access: Access) -> subprocess.Popen[str]:
    """An OpenSSH session of the same grant logged in with a session token, running ``sleep``
    (returned once it runs)."""
    info = world.cli("connect", str(access.request_id), env=world.user_env)
    proc = subprocess.Popen(
        ["sshpass", "-e", "ssh", "-p", str(info["port"]), *SSH_OPTIONS, dest(info),
         "echo in; exec sleep 120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**_NO_AGENT, "SSHPASS": info["password"]},
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == "in\n", proc.stderr
    return proc


def test_removing_the_key_cuts_its_session_with_a_message_and_spares_a_token_session(
    world: KeyWorld,
) -> None:
    key = _keypair(world)
    fingerprint = _register(world, key)
    access = _access(world)
    spared = _token_session(world, access)

    def remove() -> None:
        removed = run_cli("user", "key", "remove", fingerprint, env=world.user_env)
        assert removed.returncode == 0, removed.stderr

    try:
        cut = _cut_while_running(world, key, access, remove)
        # the token session of the same grant goes on
        assert spared.poll() is None, "a token session was cut with the key"
    finally:
        spared.kill()
        spared.communicate(timeout=30)
    assert b"jitvault: the SSH key of this session was removed" in cut.stderr
    assert cut.status == 255
    assert cut.took < CUT_BOUND_SECONDS, f"cut after {cut.took:.1f} s"


# ------------------------------------------------------------------------------- the CLI


def test_the_cli_adds_lists_and_removes_keys_and_refuses_bad_ones_with_clear_errors(
    world: KeyWorld,
) -> None:
    assert world.bob_env is not None
    carol = add_requester(world.admin_env, world.server.addr, "carol")
    key = _keypair(world)
    rsa = _keypair(world, "rsa")
    private = key.read_text()
    # a private key: refused before it leaves the machine, never echoed, pointed at the .pub
    given = run_cli("user", "key", "add", str(key), env=carol)
    assert given.returncode == 2, given
    assert "private key" in given.stderr
    assert f"did you mean {key}.pub?" in given.stderr
    for line in private.splitlines()[1:-1]:
        assert line not in given.stdout + given.stderr
    piped = run_cli("user", "key", "add", "-", env=carol, stdin=private)
    assert piped.returncode == 2
    assert "private key" in piped.stderr
    malformed = run_cli("user", "key", "add", "-", env=carol, stdin="ssh-ed25519 QUFB x\n")
    assert malformed.returncode == 2
    assert "not a valid key" in malformed.stderr
    missing = run_cli("user", "key", "add", str(world.tmp / "nope.pub"), env=carol)
    assert missing.returncode == 2
    # a good one, from stdin with a name, then the same key again (anyone's): a conflict
    line = Path(f"{rsa}.pub").read_text()
    added = world.cli("user", "key", "add", "-", "--comment", "ci runner", env=carol, stdin=line)
    assert (added["user"], added["algorithm"], added["comment"]) == (
        "carol",
        "ssh-rsa",
        "ci runner",
    )
    keygen = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{rsa}.pub"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert added["fingerprint"] == keygen.stdout.split()[1]
    for env in (carol, world.bob_env):
        dup = run_cli("user", "key", "add", f"{rsa}.pub", env=env)
        assert dup.returncode == 6, dup
        assert "registered already" in dup.stderr
    # others' keys: only admins
    theirs = run_cli("user", "key", "add", f"{key}.pub", "--user", "carol", env=world.bob_env)
    assert theirs.returncode == 4, theirs
    listed = world.cli("user", "key", "list", env=carol)
    assert [k["fingerprint"] for k in listed] == [added["fingerprint"]]
    assert world.cli("user", "key", "list", "--user", "carol", env=world.admin_env) == listed
    table = run_cli("user", "key", "list", env=carol)
    assert added["fingerprint"] in table.stdout
    assert run_cli("user", "key", "list", "--user", "carol", env=world.bob_env).returncode == 4
    gone = run_cli("user", "key", "remove", added["fingerprint"], env=carol)
    assert gone.returncode == 0, gone.stderr
    assert world.cli("user", "key", "list", env=carol) == []
    again = run_cli("user", "key", "remove", added["fingerprint"], env=carol)
    assert again.returncode == 5, again
    # every change is in the audit log, under carol, with the fingerprint
    events = world.cli("audit", "list", "--limit", "10000", env=world.admin_env)
    changes = [
        (e["action"], e["actor"], e["subject"])
        for e in events
        if e["action"].startswith("ssh_key.")
        and e["details"].get("fingerprint") == added["fingerprint"]
    ]
    assert sorted(changes) == [
        ("ssh_key.added", "carol", "user:carol"),
        ("ssh_key.removed", "carol", "user:carol"),
    ]
    assert not any(private.splitlines()[1] in str(e) for e in events)

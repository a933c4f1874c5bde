"""The SSH session proxy, end to end: real clients (OpenSSH ``ssh``, ``scp``, ``sftp`` and
paramiko), a real ``jitvault server`` with its SSH listener, the real CLI, and the tests' own
sshd as the target. jitvault's own store is SQLite or PostgreSQL per ``--db``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import paramiko
import pyte
import pytest

from tests.integration.test_recording_sink import recordings_refused
from tests.ssh_clients import dest, openssh, paramiko_client, streaming_client
from tests.sshd import SshdServer
from tests.support import run_cli, wait_port
from tests.world import ServerWorld, race, server_world

TARGET = "web1"
#: the same sshd, under a second name whose policy rule allows port forwarding
TARGET_FORWARDING = "web1fwd"
#: the same sshd, registered with another host key pinned than the one it presents
TARGET_WRONG_KEY = "web1rekeyed"
#: the same, to be re-pinned by an administrator with ``target update``
TARGET_REPIN = "web1repin"
#: the requirement is 2 s; the assertion leaves room for a loaded CI machine
CUT_BOUND_SECONDS = 5.0


@dataclass
class SshWorld(ServerWorld):
    """The server world with the tests' sshd registered as three targets; alice requests."""

    sshd: SshdServer


def _register(
    admin_env: dict[str, str], name: str, sshd: SshdServer, host_key: str | None = None
) -> None:
    add = run_cli(
        "target", "add", "ssh", name, "--host", sshd.host, "--port", str(sshd.port),
        "--option", f"host_key={host_key or sshd.host_key_line}", env=admin_env,
    )  # fmt: skip
    assert add.returncode == 0, add.stdout + add.stderr


def _other_host_key(tmp: Path, name: str) -> str:
    """A host key the target does not have (as if it had been re-keyed since registration)."""
    path = tmp / f"other_host_key_{name}"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    algorithm, blob = path.with_suffix(".pub").read_text().split()[:2]
    return f"{algorithm} {blob}"


@pytest.fixture(scope="module")
def world(
    db_kind: str, tmp_path_factory: pytest.TempPathFactory, sshd_server: SshdServer
) -> Iterator[SshWorld]:
    tmp = tmp_path_factory.mktemp("sshproxy")
    with server_world(SshWorld, db_kind, tmp, "alice", sshd=sshd_server) as w:
        _register(w.admin_env, TARGET, sshd_server)
        _register(w.admin_env, TARGET_FORWARDING, sshd_server)
        for rekeyed in (TARGET_WRONG_KEY, TARGET_REPIN):
            _register(w.admin_env, rekeyed, sshd_server, _other_host_key(tmp, rekeyed))
        w.policy(
            "rules:\n"
            f"  - name: ssh-tests\n    match: {{targets: [{TARGET}]}}\n"
            "    auto_approve: true\n"
            f"  - name: ssh-forwarding\n    match: {{targets: [{TARGET_FORWARDING}]}}\n"
            "    auto_approve: true\n    allow_forwarding: true\n"
            f"  - name: ssh-rekeyed\n    match: {{targets: [{TARGET_WRONG_KEY}, {TARGET_REPIN}]}}\n"
            "    auto_approve: true\n"
        )
        wait_port(w.ssh_port, what="the SSH proxy")
        yield w


@dataclass
class Access:
    account: str
    password: str
    request_id: int
    grant_id: int


def _access(world: SshWorld, duration: str = "10m", target: str = TARGET) -> Access:
    """A fresh Linux user with a known password, vaulted as an injected account; alice's grant."""
    password = secrets.token_urlsafe(18)
    account = world.sshd.add_user(password=password)
    acc = run_cli(
        "account", "add", target, account, "--password-stdin",
        env=world.admin_env, stdin=password + "\n",
    )  # fmt: skip
    assert acc.returncode == 0, acc.stderr
    r = world.cli(
        "request", "create", "--target", target, "--account", account, "--duration", duration,
        "--reason", "INC-7 ssh proxy test", env=world.user_env,
    )  # fmt: skip
    assert r["state"] == "active", r
    return Access(account, password, r["id"], r["grant_id"])


def _connect_info(world: SshWorld, access: Access, once: bool = False) -> dict[str, Any]:
    args = ["connect", str(access.request_id)] + (["--once"] if once else [])
    info: dict[str, Any] = world.cli(*args, env=world.user_env)
    return info


def _session_events(world: SshWorld, session_id: int) -> list[dict[str, Any]]:
    shown = world.cli("session", "show", str(session_id), env=world.admin_env)
    events: list[dict[str, Any]] = shown["events"]
    return events


def _sessions_of(world: SshWorld, grant_id: int) -> list[dict[str, Any]]:
    rows = world.cli("session", "list", env=world.admin_env)
    return [r for r in rows if r["grant_id"] == grant_id]


def _wait_ended(world: SshWorld, grant_id: int, count: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        rows = _sessions_of(world, grant_id)
        if len(rows) >= count and all(r["ended_at"] for r in rows):
            return rows
        time.sleep(0.2)
    raise AssertionError(f"the sessions of grant {grant_id} did not end: {rows}")


# ------------------------------------------------------------------------------- full flow


def test_openssh_exec_runs_as_the_vaulted_account_with_separate_stderr_and_exit_status(
    world: SshWorld,
) -> None:
    access = _access(world)
    shown = run_cli("connect", str(access.request_id), env=world.user_env)
    assert shown.returncode == 0, shown.stderr
    info = _connect_info(world, access)
    assert info["user"] == f"{access.account}.{access.grant_id}"
    assert f"ssh -p {world.ssh_port} {access.account}.{access.grant_id}@" in shown.stdout
    done = openssh("ssh", info, dest(info), "id -un; echo to-stderr >&2; exit 7")
    assert done.returncode == 7, done.stderr
    assert done.stdout == f"{access.account}\n"
    assert done.stderr.strip() == "to-stderr"
    assert access.password not in done.stdout + done.stderr
    (session,) = _wait_ended(world, access.grant_id)
    events = _session_events(world, session["id"])
    kinds = [(e["kind"], e["data"]) for e in events]
    assert ("exec", {"channel": 1, "command": "id -un; echo to-stderr >&2; exit 7"}) in kinds
    assert ("exit", {"channel": 1, "status": 7, "signal": None}) in kinds


def test_only_allow_listed_environment_variables_reach_the_target(world: SshWorld) -> None:
    # the fixture's sshd accepts every variable (AcceptEnv *): only the proxy filters them
    access = _access(world)
    info = _connect_info(world, access)
    sent = "LC_JITVAULT=kept TZ=UTC LD_PRELOAD=/tmp/evil.so BASH_ENV=/tmp/evil JV_CANARY=leak"
    done = openssh("ssh", info, "-o", f"SetEnv={sent}", dest(info), "env")
    assert done.returncode == 0, done.stderr
    seen = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert seen.get("LC_JITVAULT") == "kept"
    assert seen.get("TZ") == "UTC"
    for refused in ("LD_PRELOAD", "BASH_ENV", "JV_CANARY"):
        assert refused not in seen, (refused, done.stdout)


def test_scp_and_sftp_copy_files_both_ways_and_their_operations_are_recorded(
    world: SshWorld, tmp_path: Path
) -> None:
    access = _access(world)
    info = _connect_info(world, access)
    payload = secrets.token_bytes(300_000)
    local = tmp_path / "up.bin"
    local.write_bytes(payload)
    done = openssh("scp", info, str(local), f"{dest(info)}:uploaded.bin")
    assert done.returncode == 0, done.stderr
    back = tmp_path / "back.bin"
    done = openssh("scp", info, f"{dest(info)}:uploaded.bin", str(back))
    assert done.returncode == 0, done.stderr
    assert back.read_bytes() == payload
    batch = "rename uploaded.bin moved.bin\nget moved.bin again.bin\nrm moved.bin\nbye\n"
    done = openssh("sftp", info, dest(info), stdin=batch, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "again.bin").read_bytes() == payload
    ended = _wait_ended(world, access.grant_id, 3)
    events = [e for s in ended for e in _session_events(world, s["id"])]
    sftp = [e["data"] for e in events if e["kind"] == "sftp"]
    ops = {(d["op"], d.get("path", "").rsplit("/", 1)[-1]) for d in sftp}
    assert ("open", "uploaded.bin") in ops
    assert ("rename", "uploaded.bin") in ops
    assert ("remove", "moved.bin") in ops
    assert any(d["op"] == "open" and "write" in d["flags"] for d in sftp)


# ------------------------------------------------------------------------------- pty + replay


@pytest.mark.parametrize(
    "cipher",
    [
        "chacha20-poly1305@openssh.com",
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "aes128-ctr",
    ],
)
def test_every_cipher_openssh_offers_relays_megabytes_intact_both_ways(
    world: SshWorld, cipher: str
) -> None:
    # the proxy skips asyncssh's per-packet masking under AEAD ciphers and reuses its AES-GCM
    # objects (jitvault_ssh.aead): OpenSSH on both sides must not notice
    access = _access(world)
    info = _connect_info(world, access)
    payload = secrets.token_hex(1 << 20)  # 2 MiB up, the same back
    done = openssh("ssh", info, "-c", cipher, dest(info), "cat", stdin=payload)
    assert done.returncode == 0, done.stderr
    assert done.stdout == payload


def _read_until(chan: paramiko.Channel, out: bytearray, marker: bytes, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while marker not in out:
        if time.monotonic() > deadline:
            raise AssertionError(f"{marker!r} never came; got {bytes(out[-500:])!r}")
        if chan.recv_ready():
            out += chan.recv(65536)
        elif chan.exit_status_ready() and not chan.recv_ready():
            raise AssertionError(f"the channel closed before {marker!r}: {bytes(out[-500:])!r}")
        else:
            time.sleep(0.01)


def _screen(width: int, height: int) -> tuple[pyte.Screen, pyte.ByteStream]:
    screen = pyte.Screen(width, height)
    return screen, pyte.ByteStream(screen)


def test_a_paramiko_pty_shell_resizes_live_never_sees_the_password_and_replays_the_same_screen(
    world: SshWorld,
) -> None:
    access = _access(world)
    info = _connect_info(world, access)
    transport, sock = paramiko_client(info)
    live: list[tuple[str, Any]] = []  # what the client saw, in order, with its resizes
    received = bytearray()
    try:
        chan = transport.open_session()
        chan.set_combine_stderr(False)
        chan.get_pty(term="xterm", width=80, height=24)
        chan.invoke_shell()
        out = bytearray()
        chan.sendall(b"printf 'hello %s\\n' world; stty size; echo MARK$((40+2))\n")
        _read_until(chan, out, b"MARK42")
        live.append(("o", bytes(out)))
        received += out
        chan.resize_pty(width=100, height=30)
        live.append(("r", (100, 30)))
        out = bytearray()
        chan.sendall(b"stty size; echo DONE$((6*7))\n")
        _read_until(chan, out, b"DONE42")
        assert b"30 100" in out  # the target saw the new size
        chan.sendall(b"exit\n")
        deadline = time.monotonic() + 20
        while not chan.exit_status_ready() and time.monotonic() < deadline:
            if chan.recv_ready():
                out += chan.recv(65536)
            time.sleep(0.01)
        while chan.recv_ready():
            out += chan.recv(65536)
        live.append(("o", bytes(out)))
        received += out
        assert chan.recv_exit_status() == 0
    finally:
        transport.close()
    # the account's password reached the client neither on the wire nor inside the channel
    secret = access.password.encode()
    assert secret not in sock.received
    assert secret not in received

    screen, stream = _screen(80, 24)
    for kind, data in live:
        if kind == "o":
            stream.feed(data)
        else:
            screen.resize(lines=data[1], columns=data[0])
    (session,) = _wait_ended(world, access.grant_id)
    cast = run_cli("session", "play", str(session["id"]), "--cast", env=world.user_env)
    assert cast.returncode == 0, cast.stderr
    header, *events = [json.loads(line) for line in cast.stdout.splitlines() if line]
    assert (header["version"], header["width"], header["height"]) == (2, 80, 24)
    assert header["env"] == {"TERM": "xterm"}
    assert ["r", "100x30"] in [e[1:] for e in events]
    times = [e[0] for e in events]
    assert times == sorted(times)
    replay, replay_stream = _screen(header["width"], header["height"])
    for _, kind, data in events:
        if kind == "o":
            replay_stream.feed(data.encode())
        else:
            width, height = (int(v) for v in data.split("x"))
            replay.resize(lines=height, columns=width)
    assert replay.display == screen.display
    assert any("hello world" in line for line in replay.display)
    as_json = world.cli("session", "play", str(session["id"]), env=world.user_env)
    assert as_json == {"header": header, "events": events}
    played = run_cli("session", "play", str(session["id"]), "--speed", "50", env=world.user_env)
    assert played.returncode == 0, played.stderr
    assert "hello world" in played.stdout
    assert "DONE42" in played.stdout
    assert access.password not in cast.stdout + played.stdout


#: more terminal output than the recording queue holds (64 MiB)
TERMINAL_BYTES = 80 << 20
#: the recording queue's byte bound (its backlog is announced at a quarter of it)
QUEUE_BOUND = 64 << 20


def test_a_terminal_printing_faster_than_the_recorder_is_slowed_not_cut(
    world: SshWorld,
) -> None:
    """While the store takes no recording, a pty printing more than the recording queue holds
    is paused (without backpressure it fills the queue and is cut); once the store is back,
    every byte reaches the client and the recording."""
    access = _access(world)
    info = _connect_info(world, access)
    transport, _ = paramiko_client(info)
    received, stalled_at = 0, None
    try:
        chan = transport.open_session()
        chan.set_combine_stderr(False)
        chan.get_pty(term="xterm", width=80, height=24)
        with world.writes_held("session_events") as release:
            chan.exec_command(f"head -c {TERMINAL_BYTES} /dev/zero | tr '\\0' a")
            chan.settimeout(0.2)
            deadline = last = time.monotonic()
            deadline += 120
            while received < TERMINAL_BYTES and time.monotonic() < deadline:
                try:
                    data = chan.recv(1 << 20)
                except TimeoutError:
                    data = None
                now = time.monotonic()
                if data == b"":
                    break  # the channel closed
                if data:
                    received, last = received + len(data), now
                elif stalled_at is None and received and now - last > 1.5:
                    stalled_at = received  # the proxy waits for the recorder: let it go on
                    release.set()
        stderr = b""
        while chan.recv_stderr_ready():
            stderr += chan.recv_stderr(65536)
        assert received == TERMINAL_BYTES, (received, stderr)
        assert stalled_at is not None, "the terminal was never paused"
        assert stalled_at < QUEUE_BOUND, stalled_at
        assert chan.recv_exit_status() == 0
    finally:
        transport.close()
    (session,) = _wait_ended(world, access.grant_id)
    played = world.cli("session", "play", str(session["id"]), env=world.user_env)
    printed = "".join(data for _, kind, data in played["events"] if kind == "o")
    assert printed == "a" * TERMINAL_BYTES


def test_a_terminal_whose_output_cannot_be_recorded_is_cut_with_a_message(
    world: SshWorld,
) -> None:
    """Fail closed: once the store refuses recordings (a real trigger), a pty streaming output
    is cut within the bound, and the client is told why."""
    access = _access(world)
    info = _connect_info(world, access)
    transport, _ = paramiko_client(info)
    node = world.node()
    try:
        chan = transport.open_session()
        chan.set_combine_stderr(False)
        chan.get_pty(term="xterm", width=80, height=24)
        chan.exec_command("yes")
        chan.settimeout(CUT_BOUND_SECONDS + 10)
        assert chan.recv(65536)  # output flows (and is recorded)
        with recordings_refused(node):
            refused = time.monotonic()
            while chan.recv(1 << 20):
                pass
            cut = time.monotonic() - refused
            deadline = time.monotonic() + 5
            while not chan.exit_status_ready() and time.monotonic() < deadline:
                time.sleep(0.01)
            stderr = b""
            while chan.recv_stderr_ready():
                stderr += chan.recv_stderr(65536)
        assert cut < CUT_BOUND_SECONDS, cut
        assert b"jitvault: the session recording cannot be stored" in stderr, stderr
        assert chan.recv_exit_status() == 255
    finally:
        transport.close()
        node.close()
    _wait_no_process(access.account)


# ------------------------------------------------------------------------------- the cut


def _wait_no_process(account: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-u", account, "yes"], capture_output=True, check=False)
        if found.returncode != 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"'yes' of {account} survived the cut")


def test_revoke_cuts_a_streaming_session_within_2s_with_a_message_and_ends_it_upstream(
    world: SshWorld,
) -> None:
    access = _access(world)
    th, out = streaming_client(_connect_info(world, access))
    revoking = time.monotonic()
    world.cli("grant", "revoke", str(access.grant_id), "--reason", "incident over",
              env=world.admin_env)  # fmt: skip
    revoked = time.monotonic()
    th.join(CUT_BOUND_SECONDS + 10)
    assert not th.is_alive()
    # from the start of the CLI command (an upper bound: the revoke itself is inside)
    latency = out["at"] - revoking
    print(
        f"revoke -> ssh client cut in {latency:.3f} s from the command's start"
        f" ({out['at'] - revoked:+.3f} s from its return)"
    )
    assert b"jitvault: access grant revoked" in out["stderr"], out
    assert out["status"] == 255, out
    assert latency < CUT_BOUND_SECONDS
    _wait_no_process(access.account)


def test_expiry_cuts_a_streaming_session_within_2s_with_a_message(world: SshWorld) -> None:
    access = _access(world, duration="6s")
    info = _connect_info(world, access)
    expires = datetime.fromisoformat(info["expires_at"])
    th, out = streaming_client(info)
    th.join(30)
    assert not th.is_alive()
    cut_wall = time.time() - (time.monotonic() - out["at"])
    latency = cut_wall - expires.timestamp()
    print(f"expiry -> ssh client cut in {latency:.3f} s")
    assert b"jitvault: access grant expired" in out["stderr"], out
    assert latency < CUT_BOUND_SECONDS
    _wait_no_process(access.account)


# ------------------------------------------------------------------------------- tokens


def _refused(info: dict[str, Any], user: str | None = None, password: str | None = None) -> None:
    transport = paramiko.Transport(socket.create_connection(("127.0.0.1", info["port"]), 15))
    try:
        transport.start_client(timeout=15)
        with pytest.raises(paramiko.AuthenticationException) as caught:
            transport.auth_password(
                user or info["user"], info["password"] if password is None else password
            )
        assert type(caught.value) is paramiko.AuthenticationException  # nothing more said
    finally:
        transport.close()


def test_wrong_unknown_mismatched_empty_none_and_ended_tokens_are_all_refused_alike(
    world: SshWorld,
) -> None:
    access = _access(world)
    info = _connect_info(world, access)
    _refused(info, password=f"jvs_{info['token_id']}_{secrets.token_urlsafe(32)}")
    _refused(info, password=f"jvs_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}")
    _refused(info, password="")
    _refused(info, user=f"{access.account}.{access.grant_id + 1000}")
    _refused(info, user="no-dot-here")
    transport = paramiko.Transport(socket.create_connection(("127.0.0.1", info["port"]), 15))
    try:
        transport.start_client(timeout=15)
        with pytest.raises(paramiko.BadAuthenticationType) as none:
            transport.auth_none(info["user"])
        assert sorted(none.value.allowed_types) == ["keyboard-interactive", "password", "publickey"]
    finally:
        transport.close()
    # the token still works: none of the above used it up
    transport, _ = paramiko_client(info)
    transport.close()
    world.cli("grant", "revoke", str(access.grant_id), "--reason", "done", env=world.admin_env)
    _refused(info)
    done = openssh("ssh", info, dest(info), "true")
    assert done.returncode == 5, done.stderr  # sshpass: "invalid password" (asked again)
    assert done.stdout == ""


def test_a_login_given_up_while_the_store_opens_its_session_leaves_no_live_session(
    world: SshWorld,
) -> None:
    """The store is slow to open the session (its table held past the proxy's 10 s login
    timeout): the login is given up, and the session the store opens afterwards is ended at
    once, not left live for nobody."""
    access = _access(world)
    info = _connect_info(world, access)
    with world.writes_held("sessions") as release:
        transport = paramiko.Transport(socket.create_connection(("127.0.0.1", info["port"]), 15))
        try:
            transport.start_client(timeout=15)
            with pytest.raises((paramiko.SSHException, EOFError, OSError)):
                transport.auth_password(info["user"], info["password"])
        finally:
            transport.close()
        release.set()
    (session,) = _wait_ended(world, access.grant_id)
    assert session["end_reason"] == "login abandoned", session
    assert world.grant(access.grant_id)["state"] == "active"  # the grant itself goes on


def test_keyboard_interactive_login_with_the_token_works(world: SshWorld) -> None:
    access = _access(world)
    info = _connect_info(world, access)
    transport = paramiko.Transport(socket.create_connection(("127.0.0.1", info["port"]), 15))
    try:
        transport.start_client(timeout=15)
        transport.auth_interactive(
            info["user"], lambda _t, _i, prompts: [info["password"]] * len(prompts)
        )
        chan = transport.open_session()
        chan.exec_command("id -un")
        assert chan.makefile("rb").read().decode().strip() == access.account
    finally:
        transport.close()


def test_a_single_use_token_lets_exactly_one_of_twenty_racing_clients_in(
    world: SshWorld,
) -> None:
    access = _access(world)
    info = _connect_info(world, access, once=True)

    def attempt() -> str:
        transport = paramiko.Transport(socket.create_connection(("127.0.0.1", info["port"]), 30))
        try:
            transport.start_client(timeout=30)
            transport.auth_password(info["user"], info["password"])
            return "in"
        except paramiko.AuthenticationException:
            return "refused"
        except Exception as exc:
            return repr(exc)
        finally:
            transport.close()

    results = race(attempt, bound=90)
    assert len(results) == 20
    assert results.count("in") == 1, results
    assert set(results) == {"in", "refused"}, results
    # and a replay after the race is refused too
    _refused(info)


# ------------------------------------------------------------------------------- upstream


def test_a_target_presenting_another_host_key_than_the_pinned_one_is_refused_with_a_message(
    world: SshWorld,
) -> None:
    access = _access(world, target=TARGET_WRONG_KEY)
    info = _connect_info(world, access)
    done = openssh("ssh", info, dest(info), "id")
    assert done.returncode == 255
    assert "presented a host key other than the pinned one" in done.stderr, done.stderr
    assert done.stdout == ""
    assert access.password not in done.stderr
    (session,) = _wait_ended(world, access.grant_id)
    assert "upstream login failed" in session["end_reason"]
    kinds = [e["kind"] for e in _session_events(world, session["id"])]
    assert kinds == ["upstream_failed"]


def test_an_administrator_re_pins_a_re_keyed_target_and_its_sessions_work_again(
    world: SshWorld,
) -> None:
    refused = _access(world, target=TARGET_REPIN)
    info = _connect_info(world, refused)
    done = openssh("ssh", info, dest(info), "id")
    assert "presented a host key other than the pinned one" in done.stderr, done.stderr

    # a requester may not re-pin; a key that is no key is refused with a message
    denied = world.fails("target", "update", TARGET_REPIN, "-o", "host_key=")
    assert "may not target.update" in denied
    bad = world.fails("target", "update", TARGET_REPIN, "-o", "host_key=not-a-key",
                      env=world.admin_env)  # fmt: skip
    assert "not an SSH public key" in bad
    # the key the host presents now, read and pinned (as at registration)
    updated = world.cli("target", "update", TARGET_REPIN, "-o", "host_key=", env=world.admin_env)
    assert updated["options"]["host_key"] == world.sshd.host_key_line

    again = _access(world, target=TARGET_REPIN)
    info = _connect_info(world, again)
    done = openssh("ssh", info, dest(info), "id -un")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{again.account}\n"
    audit = world.cli("audit", "list", "--since", "10m", "--limit", "10000", env=world.admin_env)
    (event,) = [e for e in audit if e["action"] == "target.updated"
                and e["subject"] == f"target:{TARGET_REPIN}"]  # fmt: skip
    assert event["details"]["changed_options"] == ["host_key"]
    assert event["details"]["enrolled"] == ["host_key"]


# ------------------------------------------------------------------------------- forwarding


def _forward(info: dict[str, Any], port: int) -> bytes:
    """Open a -L (direct-tcpip) channel to 127.0.0.1:port and read what the service says."""
    transport, _ = paramiko_client(info)
    try:
        chan = transport.open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 40000))
        chan.settimeout(15)
        return chan.recv(256)
    finally:
        transport.close()


def test_forwarding_is_refused_when_the_policy_forbids_it_and_relayed_when_it_allows_it(
    world: SshWorld,
) -> None:
    denied = _access(world)
    info = _connect_info(world, denied)
    with pytest.raises(paramiko.ChannelException) as refused:
        _forward(info, world.sshd.port)
    assert refused.value.code == 1  # administratively prohibited
    allowed = _access(world, target=TARGET_FORWARDING)
    banner = _forward(_connect_info(world, allowed), world.sshd.port)
    assert banner.startswith(b"SSH-2.0-OpenSSH")
    ssh_port = world.sshd.port
    for access, verdict in ((denied, False), (allowed, True)):
        (session,) = _wait_ended(world, access.grant_id)
        events = _session_events(world, session["id"])
        assert {
            "kind": "forward",
            "data": {"host": "127.0.0.1", "port": ssh_port, "allowed": verdict},
        } in [{"kind": e["kind"], "data": e["data"]} for e in events]


# ------------------------------------------------------------------------------- misuse


async def _garbage_client(port: int, payload: bytes) -> None:
    import asyncio

    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    try:
        writer.write(payload)
        writer.write_eof()  # and nothing more: a truncated packet stays truncated
        await writer.drain()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                return
    except (OSError, TimeoutError):
        return
    finally:
        writer.close()


def _malformed(rng: Any) -> bytes:
    """One malformed or truncated SSH packet, after a valid or invalid version line."""
    version = b"SSH-2.0-fuzz\r\n" if rng.random() < 0.8 else rng.randbytes(rng.randint(1, 40))
    choice = rng.randint(0, 4)
    if choice == 0:  # length larger than anything allowed
        body = struct.pack("!I", 0xFFFFFFF0) + rng.randbytes(32)
    elif choice == 1:  # truncated packet
        body = struct.pack("!IB", 64, 4) + rng.randbytes(rng.randint(0, 20))
    elif choice == 2:  # garbage of random length
        body = rng.randbytes(rng.randint(1, 300))
    elif choice == 3:  # a plausible header, a padding longer than the packet
        body = struct.pack("!IB", 12, 200) + bytes([20]) + rng.randbytes(10)
    else:  # a KEXINIT-looking packet with broken name lists
        inner = bytes([20]) + rng.randbytes(16) + struct.pack("!I", 0xFFFF) + b"curve"
        pad = 8 - (len(inner) + 5) % 8 + 8
        body = struct.pack("!IB", len(inner) + pad + 1, pad) + inner + bytes(pad)
    return version + body


def _exec_unauthenticated(transport: paramiko.Transport) -> bytes:
    chan = transport.open_session(timeout=10)
    chan.exec_command("id")
    return bytes(chan.recv(10))


def test_ten_thousand_malformed_packets_and_protocol_misuse_neither_crash_nor_get_through(
    world: SshWorld,
) -> None:
    import asyncio
    import random

    rng = random.Random(5)
    payloads = [_malformed(rng) for _ in range(10_000)]

    async def fuzz() -> None:
        gate = asyncio.Semaphore(64)

        async def one(payload: bytes) -> None:
            async with gate:
                await _garbage_client(world.ssh_port, payload)

        await asyncio.wait_for(asyncio.gather(*(one(p) for p in payloads)), 300)

    started = time.monotonic()
    asyncio.run(fuzz())
    print(f"10^4 malformed packets in {time.monotonic() - started:.1f} s")
    # a channel opened before authentication is refused (the connection ends)
    transport = paramiko.Transport(socket.create_connection(("127.0.0.1", world.ssh_port), 15))
    try:
        transport.start_client(timeout=15)
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):
            _exec_unauthenticated(transport)
    finally:
        transport.close()
    # and a real client is served right after
    access = _access(world)
    info = _connect_info(world, access)
    done = openssh("ssh", info, dest(info), "echo still-serving")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "still-serving\n"
    assert world.server.proc.poll() is None


def test_a_vaulted_password_the_target_refuses_ends_the_session_with_a_message_not_the_secret(
    world: SshWorld,
) -> None:
    access = _access(world)
    world.sshd.set_password(access.account, secrets.token_urlsafe(18))  # changed behind our back
    info = _connect_info(world, access)
    done = openssh("ssh", info, dest(info), "id")
    assert done.returncode == 255
    assert f"refused the login of '{access.account}'" in done.stderr, done.stderr
    assert access.password not in done.stderr
    (session,) = _wait_ended(world, access.grant_id)
    assert session["end_reason"].startswith("upstream login failed")
    audit = run_cli("audit", "list", "--since", "10m", "--limit", "10000", "--json",
                    env=world.admin_env)  # fmt: skip
    assert audit.returncode == 0, audit.stderr
    ended = [
        e for e in json.loads(audit.stdout)
        if e["action"] == "session.ended" and e["subject"] == f"session:{session['id']}"
    ]  # fmt: skip
    assert len(ended) == 1
    assert ended[0]["details"]["reason"].startswith("upstream login failed")
    assert access.password not in audit.stdout


def test_the_proxy_host_key_is_made_once_mode_0600_and_is_the_key_clients_see(
    world: SshWorld,
) -> None:
    key_file = world.server.data_dir / "proxy" / "ssh" / "ssh_host_ed25519_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    transport = paramiko.Transport(socket.create_connection(("127.0.0.1", world.ssh_port), 15))
    try:
        transport.start_client(timeout=15)
        seen = transport.get_remote_server_key()
    finally:
        transport.close()
    on_disk = paramiko.Ed25519Key.from_private_key_file(str(key_file))
    assert seen.get_name() == "ssh-ed25519"
    assert seen.asbytes() == on_disk.asbytes()


def test_a_client_that_never_logs_in_is_dropped_after_the_10s_login_timeout(
    world: SshWorld,
) -> None:
    with socket.create_connection(("127.0.0.1", world.ssh_port), timeout=30) as s:
        s.sendall(b"SSH-2.0-slowloris\r\n")
        started = time.monotonic()
        with contextlib.suppress(OSError):
            while s.recv(65536):
                pass
        waited = time.monotonic() - started
    print(f"an idle client was dropped after {waited:.1f} s")
    assert 9.0 <= waited < 20.0


def test_a_target_that_drops_the_connection_ends_the_client_session_with_a_message(
    world: SshWorld,
) -> None:
    access = _access(world)
    info = _connect_info(world, access)
    # the remote shell's parent is the target's sshd process of this connection
    done = openssh("ssh", info, dest(info), "kill -9 $PPID; sleep 30", timeout=25)
    assert done.returncode == 255, done
    assert "jitvault: the target closed the channel" in done.stderr
    (session,) = _wait_ended(world, access.grant_id)
    assert session["end_reason"] == "the target closed the connection"

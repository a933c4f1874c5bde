"""Crash-safe credential lifecycle on an SSH target (a real sshd).

* A grant that ends rotates its shared SSH account: a password stays a password, a key a key.
* ``kill -9`` of the jitvault server at each step of a password and a key rotation (the
  RotationJournal's steps), then a restart: the vaulted credential logs in every time and no
  journal entry is left.
* ``kill -9`` of the process running ``create_account`` / ``drop_account`` at each of its steps
  (and at random moments): re-running converges, and a drop leaves nothing behind (no user, no
  home, no sudoers drop-in).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jitvault.crypto import generate_password, generate_ssh_private_key
from jitvault.domain import AccessKind, AccountMode, Sensitive
from jitvault.plugin_api.faults import FAULT_ENV
from jitvault.services import grants, jobs, policies, requests, rotation, targets
from jitvault.services.requests import NewRequest
from tests.conftest import Booted
from tests.rotation_crash import kill_9_during_rotations, vaulted
from tests.ssh_accounts import can_login, install_key, requires_sudo, sudoers_file, user_exists
from tests.sshd import SshdServer
from tests.support import cli_env, free_port, init_data_dir, run_cli, start_server

RUNS_PER_STEP = int(os.environ.get("JITVAULT_CRASH_RUNS", "10"))
REPO = Path(__file__).resolve().parents[2]


def shared_account(server: SshdServer, kind: str) -> tuple[str, Sensitive[str]]:
    """A Linux user that logs in with a password or a key only the test knows so far."""
    if kind == "password":
        secret = generate_password()
        return server.add_user(password=secret.reveal()), secret
    secret = generate_ssh_private_key()
    user = server.add_user()
    install_key(user, secret)
    return user, secret


# -- grant end --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["password", "key"])
def test_a_grant_that_ends_rotates_its_shared_ssh_account_keeping_its_kind(
    booted: Booted, sshd_server: SshdServer, kind: str
) -> None:
    node, admin = booted.node, booted.admin
    options = {"host": sshd_server.host, "port": sshd_server.port}
    root_key = Sensitive(sshd_server.admin_key_text())
    target = targets.add_target(node, admin, "web-1", "ssh", options, "root", root_key)
    assert target.options["host_key"] == sshd_server.host_key_line
    user, old = shared_account(sshd_server, kind)
    targets.add_account(node, admin, "web-1", user, AccountMode.INJECTED, old)
    policies.apply_policy(
        node,
        admin,
        "rules:\n  - name: auto\n    match: {targets: [web-1]}\n    auto_approve: true\n",
    )
    r = requests.create_request(
        node, admin, NewRequest("web-1", AccessKind.ACCOUNT, user, timedelta(minutes=1), "INC-7")
    )
    assert r.state.value == "active"
    later = node.clock() + timedelta(minutes=2)
    node.clock = lambda: later
    grants.sweep(node)
    for _ in range(20):  # bounded: the cleanup job runs on the first pass
        if not jobs.run_due_jobs(node):
            break
    current, previous = vaulted(node, "web-1", user)
    assert previous == old
    assert current is not None
    assert current != old
    assert ("PRIVATE KEY" in current.reveal()) == (kind == "key")
    assert not can_login(sshd_server, user, old)
    assert can_login(sshd_server, user, current)


# -- kill -9 of the server during a rotation --------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("step", rotation.STEPS)
@pytest.mark.parametrize("kind", ["password", "key"])
def test_kill_9_at_each_ssh_rotation_step_loses_no_credential(
    step: str, kind: str, tmp_path: Path, database_url: str, sshd_server: SshdServer
) -> None:
    port = free_port()
    data = tmp_path / "data"
    token = init_data_dir(data, port, database_url)
    config = data / "config.toml"
    env = cli_env(f"http://127.0.0.1:{port}", token)
    user, old = shared_account(sshd_server, kind)
    server = start_server(config, port, env=cli_env())
    try:
        add = run_cli("target", "add", "ssh", "web-1", "--host", sshd_server.host, "--port",
                      str(sshd_server.port), "--admin-user", "root", "--admin-key-file",
                      str(sshd_server.admin_key), env=env)  # fmt: skip
        assert add.returncode == 0, add.stderr
        if kind == "password":
            acc = run_cli("account", "add", "web-1", user, "--password-stdin",
                          env=env, stdin=old.reveal() + "\n")  # fmt: skip
        else:
            key = tmp_path / "key"
            key.write_text(old.reveal())
            acc = run_cli("account", "add", "web-1", user, "--key-file", str(key), env=env)
        assert acc.returncode == 0, acc.stderr
    finally:
        server.stop()

    kill_9_during_rotations(
        config,
        port,
        token,
        f"web-1/{user}",
        step,
        RUNS_PER_STEP,
        lambda secret: can_login(sshd_server, user, secret),
    )


# -- kill -9 of the process creating or dropping an ephemeral user ------------------------------

CREATE_STEPS = ("ssh.create_account.after_user", "ssh.create_account.after_secret")
DROP_STEPS = ("ssh.drop_account.after_lock", "ssh.drop_account.after_kill")


def plugin_call(
    server: SshdServer, op: str, user: str, crash_at: str | None = None, **extra: Any
) -> subprocess.Popen[str]:
    """Start ``python -m tests.ssh_plugin_call`` (the request, secrets included, on stdin)."""
    request = {
        "op": op,
        "user": user,
        "options": {"host": server.host, "port": server.port, "host_key": server.host_key_line},
        "admin_user": "root",
        "admin_secret": server.admin_key_text(),
        "expires_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        **extra,
    }
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if crash_at is not None:
        env[FAULT_ENV] = crash_at
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.ssh_plugin_call"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(request))
    proc.stdin.close()
    return proc


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Wait for the call (bounded); its exit status and what it wrote on stderr."""
    assert proc.stderr is not None
    try:
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        err = proc.stderr.read()
        proc.stderr.close()
    return proc.returncode, err


def call_ok(server: SshdServer, op: str, user: str, **extra: Any) -> None:
    status, err = finish(plugin_call(server, op, user, **extra))
    assert status == 0, err


def assert_nothing_left(user: str) -> None:
    assert not user_exists(user)
    assert not os.path.exists(f"/home/{user}")
    assert not os.path.exists(sudoers_file(user))
    assert not [n for n in os.listdir("/etc/sudoers.d") if n.startswith(".jitvault")]


def ephemeral_name() -> str:
    return f"jvc{secrets.token_hex(4)}"


def new_secret(kind: str) -> Sensitive[str]:
    return generate_password() if kind == "password" else generate_ssh_private_key()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["password", "key"])
@pytest.mark.parametrize("step", CREATE_STEPS)
def test_kill_9_at_each_create_account_step_then_a_rerun_converges(
    sshd_server: SshdServer, step: str, kind: str
) -> None:
    for run in range(RUNS_PER_STEP):
        user, secret = ephemeral_name(), new_secret(kind)
        sshd_server.users.append(user)  # removed at teardown whatever happens
        create = {"secret": secret.reveal(), "groups": ["users"]}
        proc = plugin_call(sshd_server, "create_account", user, crash_at=step, **create)
        assert finish(proc)[0] == -signal.SIGKILL, f"run {run}: no crash at {step}"
        call_ok(sshd_server, "create_account", user, **create)
        assert can_login(sshd_server, user, secret), f"run {run}"
        call_ok(sshd_server, "drop_account", user)
        assert_nothing_left(user)


@requires_sudo
@pytest.mark.slow
@pytest.mark.parametrize("step", DROP_STEPS)
def test_kill_9_at_each_drop_account_step_then_a_rerun_leaves_nothing(
    sshd_server: SshdServer, step: str
) -> None:
    for run in range(RUNS_PER_STEP):
        user, secret = ephemeral_name(), new_secret("key")
        sshd_server.users.append(user)
        call_ok(sshd_server, "create_account", user, secret=secret.reveal(), groups=["users"])
        call_ok(sshd_server, "elevate", user, role="sudo")
        assert os.path.exists(sudoers_file(user))
        proc = plugin_call(sshd_server, "drop_account", user, crash_at=step)
        assert finish(proc)[0] == -signal.SIGKILL, f"run {run}: no crash at {step}"
        # the first step locked the account: nobody logs in while the drop is unfinished
        assert not can_login(sshd_server, user, secret), f"run {run}"
        call_ok(sshd_server, "drop_account", user)
        assert_nothing_left(user)


@pytest.mark.slow
def test_kill_9_at_random_moments_of_create_and_drop_then_reruns_converge(
    sshd_server: SshdServer,
) -> None:
    rng = random.Random(5)
    for run in range(2 * RUNS_PER_STEP):
        user, secret = ephemeral_name(), new_secret(rng.choice(["password", "key"]))
        sshd_server.users.append(user)
        create = {"secret": secret.reveal(), "groups": ["users"]}
        for op, extra in (("create_account", create), ("drop_account", {})):
            proc = plugin_call(sshd_server, op, user, **extra)
            time.sleep(rng.uniform(0.2, 1.2))  # python start-up is ~0.3 s of it
            proc.send_signal(signal.SIGKILL)
            finish(proc)
            call_ok(sshd_server, op, user, **extra)  # the re-run converges
            if op == "create_account":
                assert can_login(sshd_server, user, secret), f"run {run}"
        assert_nothing_left(user)

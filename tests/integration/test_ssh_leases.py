"""Ephemeral Linux users and group elevation on an SSH target, end to end: the real CLI and
``jitvault server`` (API, worker, SSH proxy), OpenSSH and paramiko as clients, and the tests'
own sshd as the target, registered with an administrator key. jitvault's store is SQLite or
PostgreSQL per ``--db``.
"""

from __future__ import annotations

import os
import pwd
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.ssh_accounts import (
    groups_of,
    requires_sudo,
    sudoers_file,
    sudoers_lines,
    user_exists,
)
from tests.ssh_clients import dest, openssh, streaming_client
from tests.sshd import SshdServer
from tests.support import wait_port
from tests.world import ServerWorld, server_world, until

TARGET = "web-1"
#: the product promises a cut within 2 s; the bound leaves room for a loaded machine
CUT_BOUND_SECONDS = 5.0


@dataclass
class World(ServerWorld):
    """The server world with the tests' sshd as the target, registered with an administrator
    key; the requester's own Linux account bears its jitvault name (elevation)."""

    sshd: SshdServer


@pytest.fixture(scope="module")
def world(
    db_kind: str, tmp_path_factory: pytest.TempPathFactory, sshd_server: SshdServer
) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("sshleases")
    user = f"jvel{secrets.token_hex(3)}"
    with server_world(World, db_kind, tmp, user, sshd=sshd_server) as w:
        w.cli(
            "target", "add", "ssh", TARGET, "--host", sshd_server.host,
            "--port", str(sshd_server.port), "--admin-user", "root",
            "--admin-key-file", str(sshd_server.admin_key), env=w.admin_env,
        )  # fmt: skip
        w.policy(
            f"rules:\n  - name: oncall\n    match: {{targets: [{TARGET}]}}\n"
            "    auto_approve: true\n"
        )
        wait_port(w.ssh_port, what="the SSH proxy")
        yield w


def _home_of(user: str) -> str:
    return pwd.getpwnam(user).pw_dir


def _id_through_proxy(info: dict[str, Any]) -> tuple[str, list[str]]:
    """``id -un`` and ``id -nG`` run with OpenSSH through the proxy: who the session is."""
    done = openssh("ssh", info, dest(info), "id -un; id -nG")
    assert done.returncode == 0, done.stdout + done.stderr
    who, groups = done.stdout.splitlines()
    return who, groups.split()


def test_an_ephemeral_grant_logs_in_as_its_own_linux_user_with_the_template_groups_and_revoke_cuts_and_removes_it(  # noqa: E501
    world: World,
) -> None:
    world.cli(
        "template", "add", TARGET, "oncall", "--mode", "ephemeral", "--groups", "adm",
        env=world.admin_env,
    )  # fmt: skip
    r = world.cli(
        "request", "create", "--target", TARGET, "--ephemeral", "oncall", "--duration", "1h",
        "--reason", "INC-7",
    )  # fmt: skip
    assert r["state"] == "active", r
    gid = r["grant_id"]
    username = f"jv_oncall_{gid}"
    assert world.grant(gid)["login"] == username
    info = world.cli("connect", str(r["id"]))
    who, groups = _id_through_proxy(info)
    assert who == username
    assert "adm" in groups
    assert user_exists(username)
    home = _home_of(username)
    assert os.path.isdir(home)
    # the ephemeral secret is a key: the user has no password to log in with
    shadow = subprocess.run(["getent", "shadow", username], capture_output=True, text=True)
    assert shadow.stdout.split(":")[1] == "*"
    world.provisioned(gid)

    th, out = streaming_client(info)
    revoking = time.monotonic()
    world.revoke(gid)
    th.join(CUT_BOUND_SECONDS + 10)
    assert not th.is_alive()
    assert b"jitvault: access grant revoked" in out["stderr"], out
    assert out["at"] - revoking < CUT_BOUND_SECONDS
    until("the Linux user is removed", lambda: not user_exists(username))
    getent = subprocess.run(["getent", "passwd", username], capture_output=True, check=False)
    assert getent.returncode == 2
    assert not os.path.exists(home)
    assert world.grant(gid)["state"] == "revoked"


@pytest.fixture(scope="module")
def my_account(world: World) -> str:
    """The requester's own Linux account on the target, vaulted for elevation grants."""
    me = world.user
    password = secrets.token_urlsafe(18)
    world.sshd.add_user(me, password=password)
    world.cli(
        "account", "add", TARGET, me, "--mode", "elevation", "--password-stdin",
        env=world.admin_env, stdin=password + "\n",
    )  # fmt: skip
    return me


def test_a_group_elevation_holds_for_the_grant_only_and_keeps_a_group_held_before(
    world: World, my_account: str
) -> None:
    me = my_account
    subprocess.run(["gpasswd", "--add", me, "users"], capture_output=True, check=True)
    assert "adm" not in groups_of(me)

    r = world.cli(
        "request", "create", "--target", TARGET, "--role", "group:adm", "--duration", "10m",
        "--reason", "INC-8 elevation",
    )  # fmt: skip
    assert r["state"] == "active", r
    gid = r["grant_id"]
    who, groups = _id_through_proxy(world.cli("connect", str(r["id"])))
    assert who == me
    assert "adm" in groups
    world.provisioned(gid)
    assert world.grant(gid)["role_held_before"] is False
    world.revoke(gid)
    until("the group is taken back", lambda: "adm" not in groups_of(me))

    r2 = world.cli(
        "request", "create", "--target", TARGET, "--role", "group:users", "--duration", "10m",
        "--reason", "INC-9 elevation",
    )  # fmt: skip
    gid2 = r2["grant_id"]
    world.provisioned(gid2)
    assert world.grant(gid2)["role_held_before"] is True
    world.revoke(gid2)
    world.cleaned_up(gid2)
    assert "users" in groups_of(me), "a group held before the grant was taken away"


@requires_sudo
def test_a_sudo_elevation_lets_the_requester_run_only_the_granted_command_and_only_for_the_grant(
    world: World, my_account: str
) -> None:
    me = my_account
    r = world.cli(
        "request", "create", "--target", TARGET, "--role", "sudo:ALL=(root) NOPASSWD: /usr/bin/id",
        "--duration", "10m", "--reason", "INC-10 sudo elevation",
    )  # fmt: skip
    assert r["state"] == "active", r
    gid = r["grant_id"]
    info = world.cli("connect", str(r["id"]))
    probe = "sudo -n /usr/bin/id -u; sudo -n /usr/bin/true 2>/dev/null && echo yes || echo refused"
    done = openssh("ssh", info, dest(info), probe)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["0", "refused"], done.stdout
    assert any(line.startswith(me + " ") for line in sudoers_lines(me))

    world.revoke(gid)
    world.cleaned_up(gid)
    assert not os.path.exists(sudoers_file(me))
    after = subprocess.run(
        ["runuser", "-u", me, "--", "sudo", "-n", "/usr/bin/id", "-u"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert after.returncode != 0, after
    assert after.stdout.strip() != "0", after

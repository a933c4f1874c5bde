"""Ephemeral Linux users and group elevation on an SSH target, end to end: the real CLI and
``jitvault server`` (API, worker, SSH proxy), OpenSSH and paramiko as clients, and the tests'
own sshd as the target, registered with an administrator key. jitvault's store is SQLite or
PostgreSQL per ``--db``.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jitvault.config import load_settings
from jitvault.services import Node
from tests.conftest import scratch_database
from tests.integration.test_pg_leases import _cleanup_done, _until
from tests.integration.test_ssh_proxy import _dest, _openssh, _streaming_client
from tests.ssh_accounts import groups_of, user_exists
from tests.sshd import SshdServer
from tests.support import (
    ServerProcess,
    add_requester,
    cli_env,
    free_port,
    init_data_dir,
    run_cli,
    start_server,
    use_free_proxy_ports,
    wait_port,
)

TARGET = "web-1"
#: the product promises a cut within 2 s; the bound leaves room for a loaded machine
CUT_BOUND_SECONDS = 5.0


@dataclass
class World:
    sshd: SshdServer
    server: ServerProcess
    config: Path
    admin_env: dict[str, str]
    user: str
    user_env: dict[str, str]

    def cli(self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Any:
        done = run_cli(*args, "--json", env=env or self.user_env, stdin=stdin)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    def grant(self, grant_id: int) -> dict[str, Any]:
        shown: dict[str, Any] = self.cli("grant", "show", str(grant_id), env=self.admin_env)
        return shown

    def revoke(self, grant_id: int) -> None:
        self.cli("grant", "revoke", str(grant_id), "--reason", "done", env=self.admin_env)

    def provisioned(self, grant_id: int) -> None:
        _until("provisioned", lambda: self.grant(grant_id)["provisioned_at"] is not None)


@pytest.fixture(scope="module")
def world(
    db_kind: str, tmp_path_factory: pytest.TempPathFactory, sshd_server: SshdServer
) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("sshleases")
    with scratch_database(db_kind, tmp) as database_url:
        api_port = free_port()
        data = tmp / "data"
        token = init_data_dir(data, api_port, database_url)
        config = data / "config.toml"
        _, ssh_port = use_free_proxy_ports(config)
        server = start_server(config, api_port)
        try:
            admin_env = cli_env(server.addr, token)
            added = run_cli(
                "target", "add", "ssh", TARGET, "--host", sshd_server.host,
                "--port", str(sshd_server.port), "--admin-user", "root",
                "--admin-key-file", str(sshd_server.admin_key), env=admin_env,
            )  # fmt: skip
            assert added.returncode == 0, added.stdout + added.stderr
            policy = tmp / "policy.yaml"
            policy.write_text(
                f"rules:\n  - name: oncall\n    match: {{targets: [{TARGET}]}}\n"
                "    auto_approve: true\n"
            )
            applied = run_cli("policy", "apply", str(policy), env=admin_env)
            assert applied.returncode == 0, applied.stderr
            # the requester's own Linux account bears its jitvault name (elevation)
            user = f"jvel{secrets.token_hex(3)}"
            user_env = add_requester(admin_env, server.addr, user)
            wait_port(ssh_port, what="the SSH proxy")
            yield World(sshd_server, server, config, admin_env, user, user_env)
        finally:
            server.stop()


def _home_of(user: str) -> str:
    return pwd.getpwnam(user).pw_dir


def _id_through_proxy(info: dict[str, Any]) -> tuple[str, list[str]]:
    """``id -un`` and ``id -nG`` run with OpenSSH through the proxy: who the session is."""
    done = _openssh("ssh", info, _dest(info), "id -un; id -nG")
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

    th, out = _streaming_client(info)
    revoking = time.monotonic()
    world.revoke(gid)
    th.join(CUT_BOUND_SECONDS + 10)
    assert not th.is_alive()
    assert b"jitvault: access grant revoked" in out["stderr"], out
    assert out["at"] - revoking < CUT_BOUND_SECONDS
    _until("the Linux user is removed", lambda: not user_exists(username))
    getent = subprocess.run(["getent", "passwd", username], capture_output=True, check=False)
    assert getent.returncode == 2
    assert not os.path.exists(home)
    assert world.grant(gid)["state"] == "revoked"


def test_a_group_elevation_holds_for_the_grant_only_and_keeps_a_group_held_before(
    world: World,
) -> None:
    me = world.user
    password = secrets.token_urlsafe(18)
    world.sshd.add_user(me, password=password)
    world.cli(
        "account", "add", TARGET, me, "--mode", "elevation", "--password-stdin",
        env=world.admin_env, stdin=password + "\n",
    )  # fmt: skip
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
    _until("the group is taken back", lambda: "adm" not in groups_of(me))

    r2 = world.cli(
        "request", "create", "--target", TARGET, "--role", "group:users", "--duration", "10m",
        "--reason", "INC-9 elevation",
    )  # fmt: skip
    gid2 = r2["grant_id"]
    world.provisioned(gid2)
    assert world.grant(gid2)["role_held_before"] is True
    world.revoke(gid2)
    node = Node.open(load_settings(world.config))
    try:
        node.vault.auto_unseal()
        _until("the cleanup ran", lambda: _cleanup_done(node, gid2))
    finally:
        node.close()
    assert "users" in groups_of(me), "a group held before the grant was taken away"

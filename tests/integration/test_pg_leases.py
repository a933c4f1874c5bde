"""Ephemeral roles, elevations, exclusive checkout and --end-on-disconnect, end to end: the real
CLI and ``jitvault server`` (API, worker, PostgreSQL proxy), real clients (psql, psycopg), and
the tests' own PostgreSQL cluster as the target. jitvault's store is SQLite or PostgreSQL per
``--db``.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jitvault.config import load_settings
from jitvault.domain import Sensitive
from jitvault.plugin_api.scram import scram_verifier
from jitvault.services import Node, leases
from jitvault.storage import workflow
from tests.pgcluster import PgCluster
from tests.support import add_cluster_target, cli_env, run_cli, start_server
from tests.world import ServerWorld, cleanup_done, data_dir_on_free_ports, server_world, until

TARGET = "pgl"
#: the product promises a cut within 2 s; the bound leaves room for a loaded machine
CUT_BOUND_SECONDS = 5.0
AUTO = f"rules:\n  - name: auto\n    match: {{targets: [{TARGET}]}}\n    auto_approve: true\n"
QUEUE = AUTO + "    checkout: queue\n"


@dataclass
class LeaseWorld(ServerWorld):
    """The server world with the tests' cluster as the target; the requester's own account on
    the target bears the requester's name (elevation)."""

    cluster: PgCluster

    def connect(self, request_id: int) -> dict[str, Any]:
        info: dict[str, Any] = self.cli("connect", str(request_id))
        return info


@pytest.fixture(scope="module")
def world(
    db_kind: str, tmp_path_factory: pytest.TempPathFactory, pg_cluster: PgCluster
) -> Iterator[LeaseWorld]:
    tmp = tmp_path_factory.mktemp("pgleases")
    user = f"el_{secrets.token_hex(3)}"
    with server_world(LeaseWorld, db_kind, tmp, user, cluster=pg_cluster) as w:
        add_cluster_target(pg_cluster, TARGET, w.admin_env)
        w.policy(AUTO)
        yield w


def _login_role(cluster: PgCluster, name: str) -> Sensitive[str]:
    password = Sensitive(secrets.token_urlsafe(18))
    cluster.create_role(name, "LOGIN")
    cluster.sql(
        sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(scram_verifier(password).reveal())
        )
    )
    return password


def _psql(info: dict[str, Any], query: str) -> str:
    env = {**os.environ, "PGPASSWORD": info["password"], "PGCONNECT_TIMEOUT": "10"}
    conninfo = (
        f"host=127.0.0.1 port={info['port']} dbname={info['dbname']} user={info['user']} "
        "sslmode=require"
    )
    done = subprocess.run(
        ["/usr/bin/psql", conninfo, "-XAtc", query],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _psycopg(info: dict[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(info["uri"], connect_timeout=10, autocommit=True)


def _member(cluster: PgCluster, user: str, role: str) -> bool:
    """A direct membership (what GRANT adds and REVOKE removes)."""
    rows = cluster.sql(
        "SELECT 1 FROM pg_catalog.pg_auth_members m"
        " JOIN pg_catalog.pg_roles r ON r.oid = m.roleid"
        " JOIN pg_catalog.pg_roles u ON u.oid = m.member WHERE r.rolname = %s AND u.rolname = %s",
        [role, user],
    )
    return bool(rows)


def _cut(conn: psycopg.Connection[Any]) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


# ------------------------------------------------------------------------------- templates


def test_template_add_list_show_remove_and_names_are_rejected_not_truncated(
    world: LeaseWorld,
) -> None:
    made = world.cli(
        "template", "add", TARGET, "ops_tpl", "--mode", "ephemeral", "--groups", "adm,staff",
        env=world.admin_env,
    )  # fmt: skip
    assert (made["grant_roles"], made["on_drop"]) == (["adm", "staff"], "drop_owned")
    shown = world.cli("template", "show", TARGET, "ops_tpl")
    assert shown["grant_roles"] == ["adm", "staff"]
    assert "ops_tpl" in [t["name"] for t in world.cli("template", "list", TARGET)]
    # requesters see templates, only admins change them
    assert "may not" in world.fails("template", "remove", TARGET, "ops_tpl")
    world.cli("template", "remove", TARGET, "ops_tpl", env=world.admin_env)
    assert "ops_tpl" not in [t["name"] for t in world.cli("template", "list")]

    long_role = "r" * 64
    out = world.fails(
        "template", "add", TARGET, "long", "--grant-roles", long_role, env=world.admin_env
    )
    assert "64 bytes" in out
    out = world.fails(
        "template", "add", TARGET, "heir", "--on-drop", "reassign_owned", env=world.admin_env
    )
    assert "--reassign-to" in out
    out = world.fails(
        "template", "add", TARGET, "both", "--grant-roles", "a", "--groups", "b",
        env=world.admin_env,
    )  # fmt: skip
    assert "not both" in out
    assert "invalid template name" in world.fails(
        "template", "add", TARGET, "Bad-Name", env=world.admin_env
    )


# ------------------------------------------------------------------------------- ephemeral


def test_ephemeral_grant_logs_in_as_its_own_role_which_is_dropped_when_the_grant_is_revoked(
    world: LeaseWorld,
) -> None:
    cluster = world.cluster
    reader = f"reader_{secrets.token_hex(3)}"
    cluster.create_role(reader, "NOLOGIN")
    world.cli(
        "template", "add", TARGET, "analyst", "--mode", "ephemeral", "--grant-roles", reader,
        env=world.admin_env,
    )  # fmt: skip
    r = world.cli(
        "request", "create", "--target", TARGET, "--ephemeral", "analyst", "--duration", "10m",
        "--reason", "INC-5 ephemeral",
    )  # fmt: skip
    assert r["state"] == "active", r
    gid = r["grant_id"]
    username = f"jv_analyst_{gid}"
    assert world.grant(gid)["login"] == username
    listing = run_cli("grant", "list", env={**world.user_env, "COLUMNS": "200"})
    assert username in listing.stdout, listing.stdout + listing.stderr
    # the template changes after the grant was made: the grant keeps its own copy
    world.cli("template", "remove", TARGET, "analyst", env=world.admin_env)

    info = world.connect(r["id"])
    assert info["user"].startswith(f"{username}.")
    row = _psql(info, f"SELECT current_user, pg_has_role(current_user, '{reader}', 'MEMBER')")
    assert row == f"{username}|t"
    assert cluster.role_exists(username)
    world.provisioned(gid)

    held = _psycopg(info)
    try:
        assert held.execute("SELECT current_user").fetchone() == (username,)
        world.revoke(gid)
        until("the live session is cut", lambda: _cut(held), CUT_BOUND_SECONDS)
    finally:
        held.close()
    until("the ephemeral role is dropped", lambda: not cluster.role_exists(username))
    with pytest.raises(psycopg.OperationalError):
        _psycopg(info).close()
    assert world.grant(gid)["state"] == "revoked"


# ------------------------------------------------------------------------------- elevation


def test_elevation_grants_the_role_for_the_grant_only_and_keeps_one_held_before(
    world: LeaseWorld,
) -> None:
    cluster, me = world.cluster, world.user
    password = _login_role(cluster, me)
    world.cli(
        "account", "add", TARGET, me, "--mode", "elevation", "--password-stdin",
        env=world.admin_env, stdin=password.reveal() + "\n",
    )  # fmt: skip
    granted, kept = f"ops_{secrets.token_hex(3)}", f"kept_{secrets.token_hex(3)}"
    cluster.create_role(granted, "NOLOGIN")
    cluster.create_role(kept, "NOLOGIN")
    cluster.sql(sql.SQL("GRANT {} TO {}").format(sql.Identifier(kept), sql.Identifier(me)))
    # someone else's account is not one's own
    assert "your own account" in world.fails(
        "request", "create", "--target", TARGET, "--role", granted, "--account", "postgres",
        "--duration", "10m", "--reason", "INC-6",
    )  # fmt: skip

    r = world.cli(
        "request", "create", "--target", TARGET, "--role", granted, "--account", me,
        "--duration", "10m", "--reason", "INC-6 elevation",
    )  # fmt: skip
    assert r["state"] == "active", r
    info = world.connect(r["id"])
    assert _psql(info, f"SELECT current_user, pg_has_role('{granted}', 'MEMBER')") == f"{me}|t"
    world.provisioned(r["grant_id"])
    assert world.grant(r["grant_id"])["role_held_before"] is False
    world.revoke(r["grant_id"])
    until("the role is revoked", lambda: not _member(cluster, me, granted))

    r2 = world.cli(
        "request", "create", "--target", TARGET, "--role", kept, "--duration", "10m",
        "--reason", "INC-7 elevation",
    )  # fmt: skip
    gid = r2["grant_id"]
    world.provisioned(gid)
    assert world.grant(gid)["role_held_before"] is True
    world.revoke(gid)
    world.cleaned_up(gid)
    assert _member(cluster, me, kept), "a membership held before the grant was taken away"


# ------------------------------------------------------------------------------- end on disconnect


def test_end_on_disconnect_ends_the_grant_when_its_last_session_closes_and_drops_the_role(
    world: LeaseWorld,
) -> None:
    cluster = world.cluster
    world.cli("template", "add", TARGET, "oneshot", env=world.admin_env)
    plain = world.cli(
        "request", "create", "--target", TARGET, "--ephemeral", "oneshot", "--duration", "10m",
        "--reason", "INC-8 plain",
    )  # fmt: skip
    _psql(world.connect(plain["id"]), "SELECT 1")
    r = world.cli(
        "request", "create", "--target", TARGET, "--ephemeral", "oneshot", "--duration", "10m",
        "--reason", "INC-8 once", "--end-on-disconnect",
    )  # fmt: skip
    assert r["end_on_disconnect"] is True
    gid = r["grant_id"]
    info = world.connect(r["id"])
    first, second = _psycopg(info), _psycopg(info)
    first.close()
    time.sleep(1.0)  # the proxy records the close; one session is still live
    assert world.grant(gid)["state"] == "active"
    second.execute("SELECT 1")
    second.close()
    until("the grant ends", lambda: world.grant(gid)["state"] == "ended")
    assert "end-on-disconnect" in world.grant(gid)["end_reason"]
    until("the role is dropped", lambda: not cluster.role_exists(f"jv_oneshot_{gid}"))
    # a grant without the option outlives its sessions
    assert world.grant(plain["grant_id"])["state"] == "active"
    world.revoke(plain["grant_id"])


# ------------------------------------------------------------------------------- checkout


def test_a_checked_out_account_is_refused_or_queued_until_its_rotation_checked_it_in(
    world: LeaseWorld,
) -> None:
    cluster = world.cluster
    shared = f"app_{secrets.token_hex(3)}"
    old = _login_role(cluster, shared)
    world.cli(
        "account", "add", TARGET, shared, "--password-stdin",
        env=world.admin_env, stdin=old.reveal() + "\n",
    )  # fmt: skip
    ask = ("request", "create", "--target", TARGET, "--account", shared, "--duration", "10m")
    first = world.cli(*ask, "--reason", "INC-9 first")
    assert first["state"] == "active"
    refused = world.fails(*ask, "--reason", "INC-9 second")
    assert f"{shared} is checked out until" in refused
    assert f"by grant {first['grant_id']}" in refused

    world.policy(QUEUE)
    try:
        waiting = world.cli(*ask, "--reason", "INC-9 queued")
        brief = world.cli(*ask[:-1], "2s", "--reason", "INC-9 brief")
    finally:
        world.policy(AUTO)
    assert waiting["state"] == "approved", waiting
    assert world.grant(waiting["grant_id"])["queued"] is True
    assert (waiting["queued"], brief["queued"]) == (True, True)
    assert brief["queued_until"] == world.grant(brief["grant_id"])["expires_at"]
    time.sleep(1.5)  # a worker pass or more: a queued grant does not start by itself
    assert world.grant(waiting["grant_id"])["state"] == "approved"
    # nor does it wait past its window: the 2 s one lapses unused, the account still held
    until(
        "the brief queued grant lapses",
        lambda: world.grant(brief["grant_id"])["state"] == "expired",
    )
    lapsed = world.grant(brief["grant_id"])
    assert lapsed["queued"] is False
    assert f"{TARGET}/{shared} was checked out by grant {first['grant_id']}" in lapsed["end_reason"]

    world.revoke(first["grant_id"])
    until("the queued grant starts", lambda: world.grant(waiting["grant_id"])["state"] == "active")
    assert world.grant(brief["grant_id"])["state"] == "expired"
    assert not cluster.can_login(shared, old), "checked in before the rotation"
    _psql(world.connect(waiting["id"]), "SELECT 1")
    world.revoke(waiting["grant_id"])


# ------------------------------------------------------------------------------- crash


RUNS_PER_STEP = int(os.environ.get("JITVAULT_CRASH_RUNS", "10"))


def _grant_of_reason(config: Path, reason: str) -> int:
    """The grant of the request made with ``reason``, read from the store while no server runs
    (a restarted server could provision it before the test looks at the target)."""
    node = Node.open(load_settings(config))
    try:
        with node.read() as conn:
            (made,) = [r for r in workflow.request_list(conn) if r.reason == reason]
            grant = workflow.grant_for_request(conn, made.id)
    finally:
        node.close()
    assert grant is not None, f"request {made.id} has no grant"
    return grant.id


@pytest.mark.slow
@pytest.mark.parametrize("step", leases.STEPS)
def test_kill_9_while_provisioning_an_ephemeral_role_leaves_nothing_after_the_grant_ends(
    step: str, tmp_path: Path, database_url: str, pg_cluster: PgCluster
) -> None:
    cluster = pg_cluster
    data = data_dir_on_free_ports(tmp_path, database_url)
    config, port = data.config, data.api_port
    env = cli_env(f"http://127.0.0.1:{port}", data.token)
    reader = f"crash_{secrets.token_hex(3)}"
    cluster.create_role(reader, "NOLOGIN")
    server = start_server(config, port)
    try:
        add_cluster_target(cluster, TARGET, env)
        policy = tmp_path / "policy.yaml"
        policy.write_text(AUTO)
        for args in (
            ("policy", "apply", str(policy)),
            ("template", "add", TARGET, "crashy", "--grant-roles", reader),
        ):
            done = run_cli(*args, env=env)
            assert done.returncode == 0, done.stderr
    finally:
        server.stop()

    for run in range(RUNS_PER_STEP):
        reason = f"INC-{run} crash"
        crashing = start_server(config, port, env=cli_env(JITVAULT_FAULT_CRASH_AT=step))
        try:
            made = run_cli(
                "request", "create", "--target", TARGET, "--ephemeral", "crashy",
                "--duration", "10m", "--reason", reason, "--json", env=env,
            )  # fmt: skip
            # the worker may provision, and die, before the answer leaves the server: then the
            # CLI says the request may have been done, and the grant is looked up below
            assert made.returncode == 0 or "broke before it answered" in made.stderr, made.stderr
            crashing.proc.wait(30)  # the worker provisions, and dies at the step
            assert crashing.proc.returncode == -signal.SIGKILL, f"run {run}: no crash at {step}"
        finally:
            crashing.stop()
        gid = _grant_of_reason(config, reason)
        username = f"jv_crashy_{gid}"
        # where the crash came: before the target heard of the role, or after it made it
        assert cluster.role_exists(username) == (step == "provision_after_create"), run
        server = start_server(config, port)
        try:
            revoked = run_cli("grant", "revoke", str(gid), "--reason", "crash test", env=env)
            assert revoked.returncode == 0, revoked.stderr
            node = Node.open(load_settings(config))
            try:
                node.vault.auto_unseal()
                cleaned = partial(cleanup_done, node, gid)
                until(f"run {run}: the cleanup ran", cleaned)
            finally:
                node.close()
            assert not cluster.role_exists(username), f"run {run}: {username} left after {step}"
            assert not cluster.sql(
                "SELECT 1 FROM pg_catalog.pg_stat_activity WHERE usename = %s", [username]
            )
        finally:
            server.stop()

"""Crash-safe rotation of shared PostgreSQL accounts, against a real cluster (SCRAM over TCP).

The target is the tests' own cluster (tests/pgcluster.py); jitvault's state store is SQLite or
PostgreSQL per ``--db``.
"""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path

import pytest
from psycopg import sql

from jitvault.domain import AccessKind, AccountMode, AccountStatus, Principal, Sensitive
from jitvault.errors import Conflict
from jitvault.plugin_api import TargetRejected
from jitvault.plugin_api.scram import scram_verifier
from jitvault.services import Node, grants, jobs, policies, requests, rotation, targets
from jitvault.services.requests import NewRequest
from jitvault.storage import journal
from jitvault.storage import repositories as repo
from tests.conftest import Booted
from tests.pgcluster import PgCluster
from tests.rotation_crash import journal_rows, kill_9_during_rotations, vaulted
from tests.support import cli_env, free_port, init_data_dir, run_cli, start_server


def _role(cluster: PgCluster, password: Sensitive[str]) -> str:
    name = f"app_{secrets.token_hex(4)}"
    cluster.create_role(name, "LOGIN")
    cluster.sql(
        sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(scram_verifier(password).reveal())
        )
    )
    return name


def _register(
    node: Node, admin: Principal, cluster: PgCluster, role: str, pw: Sensitive[str]
) -> str:
    tname = f"pg-{secrets.token_hex(3)}"
    targets.add_target(
        node,
        admin,
        tname,
        "postgres",
        {"host": cluster.host, "port": cluster.port, "dbname": "postgres", "sslmode": "disable"},
        cluster.admin_user,
        cluster.admin_password,
    )
    targets.add_account(node, admin, tname, role, AccountMode.INJECTED, pw)
    return tname


def _shared_account(world: tuple[Node, Principal, PgCluster]) -> tuple[str, str, Sensitive[str]]:
    """A fresh role on the cluster with a known password, registered as an injected account:
    ``(target name, role, its password)``."""
    node, admin, cluster = world
    old = Sensitive(secrets.token_urlsafe(16))
    role = _role(cluster, old)
    return _register(node, admin, cluster, role, old), role, old


def _auto_approve(node: Node, admin: Principal, tname: str) -> None:
    policies.apply_policy(
        node,
        admin,
        f"rules:\n  - name: auto\n    match: {{targets: [{tname}]}}\n    auto_approve: true\n",
    )


@pytest.fixture
def world(booted: Booted, pg_cluster: PgCluster) -> tuple[Node, Principal, PgCluster]:
    return booted.node, booted.admin, pg_cluster


def test_rotation_on_demand_leaves_a_password_only_the_vault_knows(
    world: tuple[Node, Principal, PgCluster],
) -> None:
    node, admin, cluster = world
    tname, role, old = _shared_account(world)
    mark = cluster.log_mark()

    result = rotation.rotate_now(node, admin, f"{tname}/{role}")

    assert result.rotated
    current, previous = vaulted(node, tname, role)
    assert current is not None
    assert current != old
    assert previous == old
    assert not cluster.can_login(role, old)
    assert cluster.can_login(role, current)
    assert journal_rows(node) == 0
    assert rotation.verify_now(node, admin, f"{tname}/{role}")
    # the new plaintext never reached the server (its statement log shows only a verifier)
    assert current.reveal() not in cluster.log_text()
    assert any("SCRAM-SHA-256$" in e.message for e in cluster.entries_since(mark))


def test_a_grant_that_ends_rotates_its_shared_account(
    world: tuple[Node, Principal, PgCluster],
) -> None:
    node, admin, cluster = world
    tname, role, old = _shared_account(world)
    _auto_approve(node, admin, tname)
    r = requests.create_request(
        node, admin, NewRequest(tname, AccessKind.ACCOUNT, role, duration_of(60), "INC-1 test")
    )
    assert r.state.value == "active"
    later = node.clock() + duration_of(120)
    node.clock = lambda: later
    grants.sweep(node)
    for _ in range(20):  # bounded: the cleanup job runs on the first pass
        if not jobs.run_due_jobs(node):
            break
    current, previous = vaulted(node, tname, role)
    assert previous == old
    assert current is not None
    assert current != old
    assert not cluster.can_login(role, old)
    assert cluster.can_login(role, current)


def duration_of(seconds: int) -> timedelta:
    return timedelta(seconds=seconds)


def test_three_rejections_of_one_pending_secret_bring_a_new_one_and_nothing_is_lost(
    world: tuple[Node, Principal, PgCluster],
) -> None:
    node, _admin, cluster = world
    tname, role, _old = _shared_account(world)
    # the target accepts the new password but refuses every login with it
    cluster.sql(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
    with node.read() as conn:
        account = repo.account_get(conn, tname, role)
    pendings = []
    for attempt in range(1, 4):
        with pytest.raises(TargetRejected):
            rotation.rotate(node, account, reason="test")
        with node.read() as conn:
            entry = journal.entry_for(conn, account.id)
            assert entry is not None
            pendings.append(journal.pending_secret(conn, node.vault.keyring, entry))
            # the third rejection brings a fresh secret, which is tried (and refused) at once
            expected = attempt if attempt < rotation.MAX_REJECTIONS else 1
            assert entry.rejections == expected
    assert pendings[0] == pendings[1], "the same pending secret is retried"
    assert pendings[2] != pendings[1], "after three rejections a new one is generated"
    # the target takes logins again: the next attempt completes with the journaled secret
    cluster.sql(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
    rotation.rotate(node, account, reason="test")
    current, _ = vaulted(node, tname, role)
    assert current is not None
    assert cluster.can_login(role, current)
    assert journal_rows(node) == 0


def test_when_no_vaulted_secret_logs_in_the_account_needs_an_operator_and_is_refused(
    world: tuple[Node, Principal, PgCluster],
) -> None:
    node, admin, cluster = world
    tname, role, _old = _shared_account(world)
    with node.read() as conn:
        account = repo.account_get(conn, tname, role)
    # a rotation crashed after journaling, and someone changed the password behind our back
    with node.write() as tx:
        journal.create(tx.conn, tx.keyring, account.id, Sensitive(b"never-applied"), "test")
    cluster.sql(
        sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(scram_verifier(Sensitive("someone-else")).reveal())
        )
    )
    out = rotation.reconcile_all(node)
    assert out[f"{tname}/{role}"] == rotation.Reconciled.NEEDS_OPERATOR
    with node.read() as conn:
        assert repo.account_get(conn, tname, role).status == AccountStatus.NEEDS_OPERATOR
    _auto_approve(node, admin, tname)
    with pytest.raises(Conflict, match="needs an operator"):
        requests.create_request(
            node, admin, NewRequest(tname, AccessKind.ACCOUNT, role, duration_of(60), "INC-2")
        )


# --- kill -9 at each step, through the real server ------------------------------------------

RUNS_PER_STEP = int(os.environ.get("JITVAULT_CRASH_RUNS", "10"))


@pytest.mark.slow
@pytest.mark.parametrize("step", rotation.STEPS)
def test_kill_9_at_each_rotation_step_loses_no_password(
    step: str, tmp_path: Path, database_url: str, pg_cluster: PgCluster
) -> None:
    cluster = pg_cluster
    port = free_port()
    data = tmp_path / "data"
    token = init_data_dir(data, port, database_url)
    config = data / "config.toml"
    addr = f"http://127.0.0.1:{port}"
    env = cli_env(addr, token)
    old = Sensitive(secrets.token_urlsafe(16))
    role = _role(cluster, old)
    server = start_server(config, port, env=cli_env())
    try:
        add = run_cli(
            "target", "add", "postgres", "pgc", "--host", cluster.host, "--port",
            str(cluster.port), "--dbname", "postgres", "--option", "sslmode=disable",
            "--admin-user", cluster.admin_user, "--admin-password-stdin",
            env=env, stdin=cluster.admin_password.reveal() + "\n",
        )  # fmt: skip
        assert add.returncode == 0, add.stderr
        acc = run_cli(
            "account", "add", "pgc", role, "--password-stdin", env=env, stdin=old.reveal() + "\n"
        )
        assert acc.returncode == 0, acc.stderr
    finally:
        server.stop()

    kill_9_during_rotations(
        config,
        port,
        token,
        f"pgc/{role}",
        step,
        RUNS_PER_STEP,
        lambda s: cluster.can_login(role, s),
    )

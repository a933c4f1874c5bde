"""``jitvault user disable``: one command takes a user's access away now. Their live session
through the PostgreSQL proxy is cut, their live grant revoked, their pending request
cancelled, and their API token refused; ``user enable`` lets them log in again and gives
nothing else back. jitvault's own store is SQLite or PostgreSQL per ``--db``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import select, update

from jitvault.storage import tables as t
from tests.integration.test_pg_proxy import (
    CUT_BOUND_SECONDS,
    TARGET,
    ProxyWorld,
    _access,
    _connect_info,
    _psycopg,
    _refusal,
    proxy_world,
)
from tests.pgcluster import PgCluster
from tests.support import run_cli


@pytest.fixture(scope="module")
def world(
    db_kind: str, tmp_path_factory: pytest.TempPathFactory, pg_cluster: PgCluster
) -> Iterator[ProxyWorld]:
    policy = (
        "rules:\n"
        f"  - name: incidents\n    match: {{targets: [{TARGET}], reason: '^INC-'}}\n"
        "    auto_approve: true\n"
        f"  - name: changes\n    match: {{targets: [{TARGET}], reason: '^CHG-'}}\n"
        "    require_approvals: 1\n    approvers: [dba]\n"
    )
    with proxy_world(db_kind, tmp_path_factory.mktemp("disable"), pg_cluster, policy) as w:
        yield w


def _cut(conn: psycopg.Connection[object], started: float) -> str:
    """Query until the proxy cuts the session (bounded); what the client was told."""
    while time.monotonic() - started < CUT_BOUND_SECONDS + 5:
        try:
            conn.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            return str(exc)
        time.sleep(0.1)
    raise AssertionError("the session was not cut")


def _whoami_ok(env: dict[str, str]) -> bool:
    return run_cli("whoami", env=env).returncode == 0


def test_disabling_a_user_cuts_their_session_revokes_their_grant_and_cancels_their_requests(
    world: ProxyWorld,
) -> None:
    access = _access(world)  # alice's live grant (auto-approved)
    pending = world.cli(
        "request", "create", "--target", TARGET, "--account", access.role, "--duration", "10m",
        "--reason", "CHG-7 needs a review", env=world.user_env,
    )  # fmt: skip
    assert pending["state"] == "pending", pending
    info = _connect_info(world, access)
    admin = world.cli("whoami", env=world.admin_env)["name"]

    with _psycopg(info) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (access.role,)
        started = time.monotonic()
        done = world.cli("user", "disable", "alice", env=world.admin_env)
        assert done["disabled"] is True
        assert done["grants_revoked"] == [access.grant_id]
        assert done["requests_cancelled"] == [pending["id"]]
        # the live session is cut (the proxy sees the revoke), with the reason
        assert "access grant revoked" in _cut(conn, started)

    assert world.grant(access.grant_id)["state"] == "revoked"
    shown = world.cli("request", "show", str(pending["id"]), env=world.admin_env)
    assert shown["state"] == "cancelled"
    assert not _whoami_ok(world.user_env)
    # the session token of the revoked grant opens nothing either
    with pytest.raises(psycopg.OperationalError):
        _psycopg(info).close()
    # an admin cannot lock themselves out
    assert "cannot disable yourself" in world.fails("user", "disable", admin, env=world.admin_env)

    node = world.node()
    try:
        with node.read() as c:
            events = c.execute(
                select(t.audit_events.c.action, t.audit_events.c.actor).where(
                    t.audit_events.c.subject == "user:alice"
                )
            ).all()
    finally:
        node.close()
    assert ("user.disabled", admin) in [tuple(e) for e in events]

    enabled = world.cli("user", "enable", "alice", env=world.admin_env)
    assert enabled["disabled"] is False
    assert _whoami_ok(world.user_env)
    # what was taken stays taken
    assert world.grant(access.grant_id)["state"] == "revoked"


def test_a_session_of_a_user_whose_flag_is_set_otherwise_does_not_open(world: ProxyWorld) -> None:
    """The flag alone (set straight in the store, no grant revoked) refuses a session token,
    and the audit log says why."""
    access = _access(world)
    info = _connect_info(world, access)
    node = world.node()
    try:
        with node.write() as tx:
            tx.conn.execute(update(t.users).where(t.users.c.name == "alice").values(disabled=True))
        try:
            # 28P01, nothing more, as for any refusal
            assert "password authentication failed" in str(_refusal(info))
        finally:
            with node.write() as tx:
                tx.conn.execute(
                    update(t.users).where(t.users.c.name == "alice").values(disabled=False)
                )
        with node.read() as c:
            reasons = [
                json.loads(d).get("reason")
                for (d,) in c.execute(
                    select(t.audit_events.c.details).where(
                        t.audit_events.c.action == "session.refused"
                    )
                ).all()
            ]
        assert "the grant's user is disabled" in reasons
        # the grant itself was untouched: with the flag cleared the token logs in
        with _psycopg(info) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (access.role,)
    finally:
        node.close()

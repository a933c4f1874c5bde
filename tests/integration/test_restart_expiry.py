"""Grants end on time across restarts and across nodes: real ``jitvault server`` processes.

1. A grant that expires while the server is down is ended (with its cleanup queued) soon after
   the server starts again.
2. Two servers on one PostgreSQL database share the sweep and the job queue: with many grants
   due at once, every grant ends exactly once and gets exactly one cleanup job, run once.
"""

from __future__ import annotations

import json
import threading
import time
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w
from sqlalchemy import func, select

from jitvault.config import load_settings
from jitvault.domain import AccessKind, AccountMode, Principal, Role, Sensitive
from jitvault.services import Node, policies, requests, targets, templates, users
from jitvault.services.requests import NewRequest
from jitvault.storage import Database, repositories, workflow
from jitvault.storage import tables as t
from tests.support import ServerProcess, cli_env, free_port, init_data_dir, start_server

POLICY = """
rules:
  - name: short-auto
    match: {targets: [pg-prod]}
    auto_approve: true
    max_duration: 1h
"""
END_WITHIN = 30.0  # seconds after the server answers


def server_env() -> dict[str, str]:
    return cli_env(JITVAULT_SERVER__WORKER_INTERVAL="0.2")


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    """Every server a test starts, stopped (by pid) at the end whatever happened."""
    started: list[ServerProcess] = []
    try:
        yield started
    finally:
        for s in started:
            s.stop()


def call(addr: str, token: str, method: str, path: str, status: int, **kw: Any) -> Any:
    r = httpx.request(
        method, addr + path, headers={"Authorization": f"Bearer {token}"}, timeout=30.0, **kw
    )
    assert r.status_code == status, (method, path, r.status_code, r.text)
    return r.json()


def grant_row(database_url: str, grant_id: int) -> Any:
    db = Database(database_url)
    try:
        with db.begin() as conn:
            return workflow.grant_get(conn, grant_id)
    finally:
        db.dispose()


def cleanup_jobs(database_url: str, grant_id: int) -> list[Any]:
    payload = json.dumps({"grant_id": grant_id}, sort_keys=True)
    db = Database(database_url)
    try:
        with db.begin() as conn:
            return list(
                conn.execute(
                    select(t.jobs).where(
                        t.jobs.c.kind == "grant.cleanup", t.jobs.c.payload == payload
                    )
                )
            )
    finally:
        db.dispose()


def test_a_grant_that_expired_while_the_server_was_down_ends_soon_after_it_restarts(
    tmp_path: Path, database_url: str, servers: list[ServerProcess]
) -> None:
    data_dir = tmp_path / "node"
    port = free_port()
    admin = init_data_dir(data_dir, port, database_url)
    config = data_dir / "config.toml"
    server = start_server(config, port, server_env())
    servers.append(server)
    addr = server.addr

    call(addr, admin, "POST", "/v1/users", 201, json={"name": "olga", "role": "requester"})
    olga = call(addr, admin, "POST", "/v1/users/olga/tokens", 201, json={})["token"]
    call(addr, admin, "POST", "/v1/targets", 201, json={
        "name": "pg-prod", "kind": "postgres", "options": {"host": "127.0.0.1"},
    })  # fmt: skip
    call(addr, admin, "POST", "/v1/targets/pg-prod/accounts", 201, json={
        "username": "app_owner", "mode": "injected", "password": "owner-pw-1234",
    })  # fmt: skip
    call(addr, admin, "PUT", "/v1/policies", 200, json={"document": POLICY})

    # a short grant, and the server stopped before it expires (longer if this machine is slow)
    grant_id: int | None = None
    for seconds in (3, 8, 20):
        r = call(addr, olga, "POST", "/v1/requests", 201, json={
            "target": "pg-prod", "account": "app_owner", "duration": f"{seconds}s",
            "reason": "restart test",
        })  # fmt: skip
        assert r["state"] == "active", r
        server.stop()
        g = grant_row(database_url, r["grant_id"])
        if g.ended_at is None:
            grant_id = g.id
            break
        server = start_server(config, port, server_env())
        servers.append(server)
    assert grant_id is not None, "the server kept ending the grant before it could be stopped"
    assert g.state.value == "active"
    assert cleanup_jobs(database_url, grant_id) == []

    # wait (bounded) until the grant's time is over, with the server down
    pause = (g.expires_at - datetime.now(UTC)).total_seconds() + 1.0
    time.sleep(max(0.0, min(pause, 60.0)))
    assert datetime.now(UTC) > g.expires_at
    assert grant_row(database_url, grant_id).ended_at is None  # nobody ended it meanwhile

    server = start_server(config, port, server_env())
    servers.append(server)
    deadline = time.monotonic() + END_WITHIN
    shown: dict[str, Any] = {}
    while time.monotonic() < deadline:
        shown = call(server.addr, admin, "GET", f"/v1/grants/{grant_id}", 200)
        if shown["state"] != "active":
            break
        time.sleep(0.2)
    assert shown["state"] == "ended", shown
    assert shown["end_reason"] == "expired"
    assert shown["seconds_left"] == 0
    jobs = cleanup_jobs(database_url, grant_id)
    assert len(jobs) == 1
    events = [
        e
        for e in call(server.addr, admin, "GET", "/v1/audit/events", 200)
        if e["subject"] == f"grant:{grant_id}" and e["action"] == "grant.ended"
    ]
    assert len(events) == 1
    assert events[0]["details"]["cleanup_queued"] is True
    assert call(server.addr, admin, "POST", "/v1/audit/verify", 200)["ok"] is True


# --- several nodes on one PostgreSQL --------------------------------------------------------------

EXPIRED_AT_START = 250  # more than one sweep batch (200)
SCHEDULED = 100


def _count(conn: Any, table: Any, *where: Any) -> int:
    return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def test_two_servers_on_one_postgres_end_every_grant_exactly_once(
    db_kind: str, tmp_path: Path, database_url: str, servers: list[ServerProcess]
) -> None:
    if db_kind != "postgres":
        pytest.skip("several nodes share one database only on PostgreSQL")
    data_dir = tmp_path / "node"
    init_data_dir(data_dir, free_port(), database_url)
    config = data_dir / "config.toml"
    # one attempt per cleanup, so that "run once" is exactly one claim of one node
    doc = tomllib.loads(config.read_text())
    doc.setdefault("workflow", {})["cleanup_max_attempts"] = 1
    config.write_text(tomli_w.dumps(doc))

    # the test's own node (no worker) files the requests, as fast as the services allow
    node = Node.open(load_settings(config))
    try:
        assert node.vault.auto_unseal()
        with node.read() as conn:
            a = repositories.user_get(conn, "admin")
        admin = Principal(a.id, a.name, Role.ADMIN, ())
        # ephemeral accounts on an unreachable target: every cleanup (a drop) fails at once,
        # deterministically, and no shared account is marked for an operator
        unreachable = {"host": "127.0.0.1", "port": free_port()}
        targets.add_target(node, admin, "pg-prod", "postgres", unreachable)
        secret = Sensitive("owner-pw-1234")
        targets.add_account(node, admin, "pg-prod", "app_owner", AccountMode.INJECTED, secret)
        policies.apply_policy(node, admin, POLICY)
        templates.add_template(node, admin, "pg-prod", "load", grant_roles=("pg_monitor",))
        u = users.add_user(node, admin, "olga", Role.REQUESTER, [])
        olga = Principal(u.id, u.name, u.role, u.groups)

        def ask(duration: timedelta, start_at: datetime | None = None) -> int:
            new = NewRequest("pg-prod", AccessKind.EPHEMERAL, "load", duration, "load", start_at)
            return requests.create_request(node, olga, new).id

        # wave 1: grants that all expire before any server runs
        wave1 = [ask(timedelta(seconds=1)) for _ in range(EXPIRED_AT_START)]
        time.sleep(1.5)

        # both servers start together and find them all due at once
        ports = [free_port(), free_port()]
        boot: list[ServerProcess] = []
        failures: list[str] = []
        # two nodes on one machine: each its own proxy ports (a taken port stops a server),
        # handed out here, before the threads, so that no two calls race for one port
        envs = [
            server_env()
            | {
                "JITVAULT_SERVER__PG_PROXY_PORT": str(free_port()),
                "JITVAULT_SERVER__SSH_PROXY_PORT": str(free_port()),
            }
            for _ in ports
        ]

        def start(port: int, env: dict[str, str]) -> None:
            try:
                boot.append(start_server(config, port, env, timeout=90))
            except RuntimeError as exc:  # reported below, with the server's log
                failures.append(str(exc))

        starters = [
            threading.Thread(target=start, args=(p, e), daemon=True)
            for p, e in zip(ports, envs, strict=True)
        ]
        for th in starters:
            th.start()
        for th in starters:
            th.join(120)
        servers.extend(boot)
        assert len(boot) == 2, "a server did not start:\n" + "\n".join(failures)

        # wave 2: scheduled grants that start and end at the same instants, while both run
        start_at = node.clock() + timedelta(seconds=8)
        wave2 = [ask(timedelta(seconds=2), start_at) for _ in range(SCHEDULED)]
        everything = wave1 + wave2

        # wait (bounded) until every grant ended and every cleanup job has run
        deadline = time.monotonic() + 90
        remaining = unrun = len(everything)
        while time.monotonic() < deadline and (remaining or unrun):
            time.sleep(0.5)
            with node.read() as conn:
                remaining = _count(
                    conn,
                    t.access_requests,
                    t.access_requests.c.id.in_(everything),
                    t.access_requests.c.state != "ended",
                )
                unrun = _count(
                    conn, t.jobs, t.jobs.c.kind == "grant.cleanup", t.jobs.c.state != "dead"
                )
        assert remaining == 0, f"{remaining} grants did not end"
        assert unrun == 0, f"{unrun} cleanup jobs did not run"

        for s in boot:
            s.stop()
        with node.read() as conn:
            for rid in everything:
                g = workflow.grant_for_request(conn, rid)
                assert g is not None
                assert g.end_reason == "expired"
                subject = t.audit_events.c.subject == f"grant:{g.id}"
                ended = _count(
                    conn, t.audit_events, subject, t.audit_events.c.action == "grant.ended"
                )
                assert ended == 1, (rid, ended)
                if rid in wave2:
                    activated = t.audit_events.c.action == "grant.activated"
                    assert _count(conn, t.audit_events, subject, activated) == 1, rid
                payload = json.dumps({"grant_id": g.id}, sort_keys=True)
                jobs = list(
                    conn.execute(
                        select(t.jobs).where(
                            t.jobs.c.kind == "grant.cleanup", t.jobs.c.payload == payload
                        )
                    )
                )
                assert len(jobs) == 1, (rid, len(jobs))
                # run once: one claim, one attempt, one terminal audit event (the target is
                # unreachable and one attempt is allowed, so the job ends "dead")
                job = jobs[0]
                assert (job.state, job.attempts) == ("dead", 1), (rid, job.state)
                job_subject = t.audit_events.c.subject == f"job:{job.id}"
                assert _count(conn, t.audit_events, job_subject) == 1, rid
    finally:
        node.close()

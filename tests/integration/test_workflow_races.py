"""Races in the just-in-time workflow, on a real database (``--db sqlite|postgres``).

Each test reuses one node and database and runs many trials on fresh requests; each trial starts
its contenders together (threads behind a barrier) and checks that exactly one outcome won. The
only errors a loser may get are Conflict (the state moved on) and, where stated, nothing else:
SQLite serializes writers (BEGIN IMMEDIATE, busy_timeout 30 s), so "database is locked" or any
other error is a failure, as is a deadlock on PostgreSQL.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from sqlalchemy import func, select

from jitvault.domain import Principal, Role
from jitvault.domain.requests import RequestState
from jitvault.errors import Conflict
from jitvault.services import grants, policies, requests
from jitvault.storage import tables as t
from tests.conftest import Booted
from tests.integration.test_workflow import T0, World, setup_world

TRIALS = 200
APPROVERS = 50
JOIN_TIMEOUT = 120.0


def race(*contenders: Callable[[], Any]) -> list[Any]:
    """Run the contenders at once; return each one's result or the exception it raised."""
    barrier = threading.Barrier(len(contenders), timeout=60)
    results: list[Any] = [None] * len(contenders)

    def run(i: int, fn: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            results[i] = fn()
        except BaseException as exc:  # recorded and judged by the caller
            results[i] = exc

    threads = [
        threading.Thread(target=run, args=(i, fn), daemon=True) for i, fn in enumerate(contenders)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(JOIN_TIMEOUT)
    assert not any(th.is_alive() for th in threads), "a contender did not finish"
    return results


def errors(results: list[Any]) -> list[BaseException]:
    return [r for r in results if isinstance(r, BaseException)]


def only_conflicts(results: list[Any]) -> int:
    """How many lost with Conflict; fail on any other error."""
    errs = errors(results)
    others = [e for e in errs if not isinstance(e, Conflict)]
    assert not others, [repr(e) for e in others[:3]]
    return len(errs)


def count(world: World, table: Any, *where: Any) -> int:
    with world.node.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def grant_count(world: World, request_id: int) -> int:
    return count(world, t.grants, t.grants.c.request_id == request_id)


def approval_count(world: World, request_id: int) -> int:
    return count(world, t.approvals, t.approvals.c.request_id == request_id)


#: the README's policy without its account criterion: each trial asks for an account of its own
#: (a shared account serves one live grant at a time), so that every trial races on a free one
RACE_POLICY = """
rules:
  - name: prod-needs-two-dbas
    match: {groups: [dev], targets: [pg-prod]}
    require_approvals: 2
    approvers: [dba]
    max_duration: 1h
  - name: oncall-auto
    match: {groups: [oncall], targets: [pg-prod], reason: "^INC-[0-9]+"}
    auto_approve: true
    max_duration: 30m
"""


@pytest.fixture
def world(booted: Booted) -> World:
    w = setup_world(booted)
    policies.apply_policy(w.node, w.admin, RACE_POLICY)
    return w


def ask(world: World, who: Principal, trial: int, reason: str) -> Any:
    return world.ask(who, account=world.account(f"app_{trial}"), reason=reason)


@pytest.fixture
def alice(world: World) -> Principal:
    return world.user("alice", Role.REQUESTER, "dev")


@pytest.fixture
def dbas(world: World) -> list[Principal]:
    return [world.user(f"dba{i:02d}", Role.APPROVER, "dba") for i in range(APPROVERS)]


def test_fifty_distinct_approvers_racing_on_a_two_approver_request_create_exactly_one_grant(
    world: World, alice: Principal, dbas: list[Principal]
) -> None:
    for trial in range(TRIALS):
        r = ask(world, alice, trial, f"trial {trial}")
        assert r.required_approvals == 2
        results = race(*(partial(requests.approve, world.node, d, r.id) for d in dbas))
        lost = only_conflicts(results)
        assert grant_count(world, r.id) == 1, trial
        assert approval_count(world, r.id) == 2, trial
        assert world.state(r.id) == RequestState.ACTIVE, trial
        # the two approvers that counted returned normally; every later one found it decided
        assert lost == APPROVERS - 2, trial


def test_fifty_approvals_by_one_approver_count_once_and_a_second_approver_grants_once(
    world: World, alice: Principal, dbas: list[Principal]
) -> None:
    same, other = dbas[0], dbas[1]
    for trial in range(TRIALS):
        r = ask(world, alice, trial, f"trial {trial}")
        if trial % 2 == 0:
            # one approver fifty times at once: one approval, nothing granted
            results = race(*(partial(requests.approve, world.node, same, r.id),) * APPROVERS)
            assert only_conflicts(results) == 0, trial
            assert approval_count(world, r.id) == 1, trial
            assert grant_count(world, r.id) == 0, trial
            assert world.state(r.id) == RequestState.PENDING, trial
            requests.approve(world.node, other, r.id)
        else:
            # the same approver 25 times racing a second approver 25 times: one grant
            half = APPROVERS // 2
            results = race(
                *(partial(requests.approve, world.node, same, r.id),) * half,
                *(partial(requests.approve, world.node, other, r.id),) * half,
            )
            only_conflicts(results)
        assert grant_count(world, r.id) == 1, trial
        assert approval_count(world, r.id) == 2, trial
        assert world.state(r.id) == RequestState.ACTIVE, trial


def test_approve_racing_deny_has_exactly_one_outcome(
    world: World, alice: Principal, dbas: list[Principal]
) -> None:
    first, approver, denier = dbas[:3]
    wins = {"approved": 0, "denied": 0}
    for trial in range(TRIALS):
        r = ask(world, alice, trial, f"trial {trial}")
        requests.approve(world.node, first, r.id)  # one more approval grants it
        results = race(
            partial(requests.approve, world.node, approver, r.id),
            partial(requests.deny, world.node, denier, r.id, "no"),
        )
        assert only_conflicts(results) == 1, (trial, results)
        state, grants_made = world.state(r.id), grant_count(world, r.id)
        if isinstance(results[1], Conflict):
            assert (state, grants_made) == (RequestState.ACTIVE, 1), trial
            wins["approved"] += 1
        else:
            assert isinstance(results[0], Conflict)
            assert (state, grants_made) == (RequestState.DENIED, 0), trial
            assert approval_count(world, r.id) == 1, trial
            wins["denied"] += 1
    assert sum(wins.values()) == TRIALS


def test_approve_racing_request_expiry_has_exactly_one_outcome(
    world: World, alice: Principal, dbas: list[Principal]
) -> None:
    first, approver = dbas[:2]
    for trial in range(TRIALS):
        base = T0 + timedelta(hours=2 * trial)
        world.at(base)
        r = ask(world, alice, trial, f"trial {trial}")
        requests.approve(world.node, first, r.id)
        # the approver acts just before the TTL; the sweeper runs just after it
        world.at(r.expires_at - timedelta(seconds=1))
        results = race(
            partial(requests.approve, world.node, approver, r.id),
            partial(grants.sweep, world.node, at=r.expires_at),
        )
        assert only_conflicts(results) <= 1, (trial, results)
        state, grants_made = world.state(r.id), grant_count(world, r.id)
        if isinstance(results[0], Conflict):
            assert (state, grants_made) == (RequestState.EXPIRED, 0), trial
            assert results[1].expired_requests == 1, trial
        else:
            assert not isinstance(results[1], BaseException), results[1]
            assert (state, grants_made) == (RequestState.ACTIVE, 1), trial
            assert results[1].expired_requests == 0, trial


def test_revoke_racing_revoke_revokes_once_and_the_other_gets_conflict(
    world: World, dbas: list[Principal]
) -> None:
    olga = world.user("olga", Role.REQUESTER, "oncall")
    a, b = dbas[:2]
    for trial in range(TRIALS):
        r = ask(world, olga, trial, f"INC-{trial} fix")
        g = world.grant_of(r.id)
        results = race(
            partial(grants.revoke_grant, world.node, a, g.id, "race a"),
            partial(grants.revoke_grant, world.node, b, g.id, "race b"),
        )
        assert only_conflicts(results) == 1, (trial, results)
        assert world.state(r.id) == RequestState.REVOKED
        subject = t.audit_events.c.subject == f"grant:{g.id}"
        assert (
            count(world, t.audit_events, subject, t.audit_events.c.action == "grant.revoked") == 1
        )
        payload = json.dumps({"grant_id": g.id}, sort_keys=True)
        cleanup = (t.jobs.c.kind == "grant.cleanup", t.jobs.c.payload == payload)
        assert count(world, t.jobs, *cleanup) == 1, trial

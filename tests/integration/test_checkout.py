"""Exclusive checkout of shared accounts, on a real database (``--db sqlite|postgres``): at most
one live grant per account, however many requests and approvals race; refuse or queue per
policy; a queued grant starts when the account is checked in.

The target here is never reached: only grants that never started check their account in without
a rotation. The check-in after a rotation is tested end to end in test_pg_leases.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial

import pytest
from sqlalchemy import func, select

from jitvault.domain import AccessKind, RequestState, Role
from jitvault.services import grants, policies, requests
from jitvault.services.requests import CheckedOut, NewRequest
from jitvault.storage import tables as t
from tests.conftest import Booted
from tests.integration.test_workflow import T0, World, setup_world
from tests.integration.test_workflow_races import only_conflicts, race

RACERS = 20
TRIALS = 10

AUTO = """
rules:
  - name: auto
    match: {targets: [pg-prod]}
    auto_approve: true
"""
ONE_APPROVAL = """
rules:
  - name: one-dba
    match: {targets: [pg-prod]}
    require_approvals: 1
    approvers: [dba]
"""
QUEUE = AUTO + "    checkout: queue\n"


@pytest.fixture
def world(booted: Booted) -> World:
    return setup_world(booted)


def live_grants(world: World, account: str) -> int:
    live = [s.value for s in (RequestState.APPROVED, RequestState.ACTIVE)]
    with world.node.read() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(t.grants)
                .join(t.access_requests, t.access_requests.c.id == t.grants.c.request_id)
                .where(
                    t.grants.c.name == account,
                    t.grants.c.queued.is_(False),
                    t.access_requests.c.state.in_(live),
                )
            ).scalar_one()
        )


def ask(account: str, start_at: datetime | None = None) -> NewRequest:
    return NewRequest(
        "pg-prod", AccessKind.ACCOUNT, account, timedelta(minutes=30), "INC-1", start_at
    )


def test_twenty_racing_requests_for_one_account_make_exactly_one_live_grant(
    world: World,
) -> None:
    policies.apply_policy(world.node, world.admin, AUTO)
    users = [world.user(f"u{i:02d}", Role.REQUESTER) for i in range(RACERS)]
    for trial in range(TRIALS):
        account = world.account(f"shared_{trial}")
        results = race(
            *(partial(requests.create_request, world.node, u, ask(account)) for u in users)
        )
        won = [r for r in results if not isinstance(r, BaseException)]
        lost = [r for r in results if isinstance(r, BaseException)]
        assert len(won) == 1, (trial, lost[:3])
        assert all(isinstance(e, CheckedOut) for e in lost), [repr(e) for e in lost[:3]]
        assert won[0].state == RequestState.ACTIVE
        assert live_grants(world, account) == 1, trial
        grant_id = requests.grant_id_of(world.node, won[0])
        assert f"{account} is checked out until 09:30 UTC by grant {grant_id}" in str(lost[0])


def test_twenty_racing_approvals_for_one_account_make_exactly_one_live_grant(
    world: World,
) -> None:
    policies.apply_policy(world.node, world.admin, ONE_APPROVAL)
    alice = world.user("alice", Role.REQUESTER)
    dbas = [world.user(f"dba{i:02d}", Role.APPROVER, "dba") for i in range(RACERS)]
    for trial in range(TRIALS):
        account = world.account(f"shared_{trial}")
        pending = [requests.create_request(world.node, alice, ask(account)) for _ in range(RACERS)]
        assert {r.state for r in pending} == {RequestState.PENDING}
        results = race(
            *(
                partial(requests.approve, world.node, d, r.id)
                for d, r in zip(dbas, pending, strict=True)
            )
        )
        lost = [e for e in results if isinstance(e, BaseException)]
        assert len(lost) == RACERS - 1, trial
        assert all(isinstance(e, CheckedOut) for e in lost), [repr(e) for e in lost[:3]]
        states = [world.state(r.id) for r in pending]
        assert states.count(RequestState.ACTIVE) == 1, trial
        assert states.count(RequestState.PENDING) == RACERS - 1, trial
        assert live_grants(world, account) == 1, trial


def test_a_queued_grant_waits_and_starts_when_an_unused_grant_checks_the_account_in(
    world: World,
) -> None:
    policies.apply_policy(world.node, world.admin, QUEUE)
    alice = world.user("alice", Role.REQUESTER)
    bob = world.user("bob", Role.REQUESTER)
    # a scheduled grant holds the account from its approval
    later = requests.create_request(world.node, alice, ask("app_owner", T0 + timedelta(hours=1)))
    assert later.state == RequestState.APPROVED
    first = requests.create_request(world.node, bob, ask("app_owner"))
    second = requests.create_request(world.node, alice, ask("app_owner"))
    assert (first.state, second.state) == (RequestState.APPROVED, RequestState.APPROVED)
    assert world.grant_of(first.id).queued
    assert world.grant_of(second.id).queued

    # the sweep neither starts nor ends a queued grant, however much time passes
    world.at(T0 + timedelta(minutes=50))
    grants.sweep(world.node)
    assert world.state(first.id) == RequestState.APPROVED

    # the scheduled grant is revoked before it started: nothing to rotate, checked in at once,
    # and the oldest queued grant starts now, for its full duration
    admin = world.admin
    grants.revoke_grant(world.node, admin, world.grant_of(later.id).id, "not needed")
    g = world.grant_of(first.id)
    assert (world.state(first.id), g.queued) == (RequestState.ACTIVE, False)
    assert (g.starts_at, g.expires_at) == (world.now, world.now + timedelta(minutes=30))
    assert world.state(second.id) == RequestState.APPROVED
    assert live_grants(world, "app_owner") == 1
    events = [e["action"] for e in world.events(f"grant:{g.id}")]
    assert events.index("grant.queued") < events.index("grant.activated")

    # a queued request may be withdrawn; it leaves the queue
    requests.cancel(world.node, alice, second.id)
    assert world.state(second.id) == RequestState.CANCELLED
    assert live_grants(world, "app_owner") == 1


def test_a_check_in_racing_requests_and_a_cancel_leaves_at_most_one_live_grant(
    world: World,
) -> None:
    """Lock order: a check-in, racing approvals of the same account and the cancel of a queued
    request never deadlock (only Conflict may lose), and the account has one holder at most."""
    policies.apply_policy(world.node, world.admin, QUEUE)
    users = [world.user(f"u{i:02d}", Role.REQUESTER) for i in range(6)]
    for trial in range(TRIALS):
        account = world.account(f"shared_{trial}")
        held = requests.create_request(
            world.node, users[0], ask(account, world.now + timedelta(hours=1))
        )
        queued = requests.create_request(world.node, users[1], ask(account))
        assert world.grant_of(queued.id).queued
        results = race(
            partial(
                grants.revoke_grant, world.node, world.admin, world.grant_of(held.id).id, "race"
            ),
            partial(requests.cancel, world.node, users[1], queued.id),
            *(partial(requests.create_request, world.node, u, ask(account)) for u in users[2:]),
        )
        only_conflicts(results)
        assert world.state(held.id) == RequestState.REVOKED, trial
        # with checkout: queue somebody always holds the account after the check-in: the queued
        # grant, or (if it was withdrawn) the first of the new requests, queued or not
        assert live_grants(world, account) == 1, trial

"""Exclusive checkout of shared accounts, on a real database (``--db sqlite|postgres``): at most
one live grant per account, however many requests and approvals race; refuse or queue per
policy; a queued grant starts when the account is checked in, and lapses unused if its window
ends first.

The target here is never reached: only grants that never started check their account in without
a rotation. The check-in after a rotation is tested end to end in test_pg_leases.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial

import pytest
from sqlalchemy import func, select

from jitvault.api.schemas import GrantOut
from jitvault.domain import AccessKind, RequestState, Role
from jitvault.errors import Conflict
from jitvault.services import grants, policies, requests
from jitvault.services.requests import CheckedOut, NewRequest
from jitvault.storage import tables as t
from tests.conftest import Booted, grant_id_of
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
        grant_id = grant_id_of(world.node, won[0])
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


def test_an_approval_audits_the_grant_before_its_checkout_of_the_account(
    world: World,
) -> None:
    """In the chain an approval reads in the order it happened to the account: the request is
    approved, the grant is created, the grant checks the account out (then it starts), whether
    a policy or a person approved it."""
    dba = world.user("dba00", Role.APPROVER, "dba")
    alice = world.user("alice", Role.REQUESTER)
    for policy, account in ((AUTO, "by_policy"), (ONE_APPROVAL, "by_person")):
        policies.apply_policy(world.node, world.admin, policy)
        world.account(account)
        r = requests.create_request(world.node, alice, ask(account))
        if r.state == RequestState.PENDING:
            requests.approve(world.node, dba, r.id)
        grant = f"grant:{world.grant_of(r.id).id}"
        order = [
            e["action"]
            for e in world.events()
            if e["subject"] in (f"request:{r.id}", grant, f"account:pg-prod/{account}")
        ]
        # a policy's approval is in its request.created; a person's is an event of its own
        approved = "request.created" if policy is AUTO else "request.approved"
        assert order[-4:] == [
            approved,
            "grant.created",
            "account.checked_out",
            "grant.activated",
        ], (account, order)


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

    # the sweep neither starts nor ends a queued grant while its window lasts
    world.at(T0 + timedelta(minutes=20))
    assert grants.sweep(world.node).total == 0
    assert world.state(first.id) == RequestState.APPROVED
    # the time it is told it has left is its full duration, not what is left of its window
    assert GrantOut.of(world.grant_of(first.id), world.now).seconds_left == 30 * 60

    # the scheduled grant is revoked before it started: nothing to rotate, checked in at once,
    # and the oldest queued grant starts now, for its full duration
    admin = world.admin
    grants.revoke_grant(world.node, admin, world.grant_of(later.id).id, "not needed")
    g = world.grant_of(first.id)
    assert (world.state(first.id), g.queued) == (RequestState.ACTIVE, False)
    assert (g.starts_at, g.expires_at) == (world.now, world.now + timedelta(minutes=30))
    assert g.expires_at > T0 + timedelta(minutes=30)  # past its window as approved: full duration
    assert world.state(second.id) == RequestState.APPROVED
    assert live_grants(world, "app_owner") == 1
    events = [e["action"] for e in world.events(f"grant:{g.id}")]
    assert events.index("grant.queued") < events.index("grant.activated")

    # a queued request may be withdrawn; it leaves the queue
    assert world.grant_of(second.id).waiting
    requests.cancel(world.node, alice, second.id)
    assert world.state(second.id) == RequestState.CANCELLED
    assert not world.grant_of(second.id).waiting  # its flag stays; it waits no more
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


def test_a_queued_grant_whose_window_ends_before_the_check_in_lapses_unused(
    world: World,
) -> None:
    """A queued grant waits until the end of the window it was approved for, no longer: then
    its request expires and its grant ends unused, with no cleanup (it never held the account,
    so nothing is rotated), whether the sweep or a check-in comes first."""
    policies.apply_policy(world.node, world.admin, QUEUE)
    alice, bob, carol, dave = (
        world.user(n, Role.REQUESTER) for n in ("alice", "bob", "carol", "dave")
    )
    # alice's scheduled grant holds the account from its approval until it is checked in
    holder = requests.create_request(world.node, alice, ask("app_owner", T0 + timedelta(hours=1)))
    holder_grant = world.grant_of(holder.id).id
    bob_r = requests.create_request(world.node, bob, ask("app_owner"))  # window ends 09:30
    world.at(T0 + timedelta(minutes=10))
    carol_r = requests.create_request(world.node, carol, ask("app_owner"))  # ends 09:40
    world.at(T0 + timedelta(minutes=35))
    dave_r = requests.create_request(world.node, dave, ask("app_owner"))  # ends 10:05
    assert all(world.grant_of(r.id).queued for r in (bob_r, carol_r, dave_r))

    # still within bob's window (09:29): nothing lapses
    assert grants.sweep(world.node, at=T0 + timedelta(minutes=29)).lapsed == 0
    assert world.state(bob_r.id) == RequestState.APPROVED

    # 09:35: bob's window ended while alice's grant held the account
    result = grants.sweep(world.node)
    assert result.lapsed == 1
    assert result.total == 1
    g = world.grant_of(bob_r.id)
    assert world.state(bob_r.id) == RequestState.EXPIRED
    assert (g.queued, g.ended_at) == (False, world.now)
    assert g.end_reason == (
        f"its window ended at 2026-11-23 09:30 UTC while pg-prod/app_owner was checked out "
        f"by grant {holder_grant}"
    )
    assert world.cleanup_jobs(g.id) == []
    lapsed = [e for e in world.events(f"grant:{g.id}") if e["action"] == "grant.lapsed"]
    assert len(lapsed) == 1
    assert lapsed[0]["outcome"] == "failure"
    assert lapsed[0]["details"]["behind_grant"] == holder_grant
    assert lapsed[0]["details"]["account"] == "pg-prod/app_owner"
    assert grants.sweep(world.node).lapsed == 0  # once
    assert [world.state(r.id) for r in (carol_r, dave_r)] == [RequestState.APPROVED] * 2

    # 09:45, before any sweep: alice's grant is revoked unused and checks the account in. Carol
    # waited past her window (09:40), so the account goes to dave, who starts now
    world.at(T0 + timedelta(minutes=45))
    grants.revoke_grant(world.node, world.admin, holder_grant, "not needed")
    assert world.state(carol_r.id) == RequestState.APPROVED  # never started
    assert world.state(dave_r.id) == RequestState.ACTIVE
    assert world.grant_of(dave_r.id).starts_at == world.now
    assert live_grants(world, "app_owner") == 1

    # the sweep lapses carol's, now behind dave's grant; nothing of hers is cleaned up
    assert grants.sweep(world.node).lapsed == 1
    assert world.state(carol_r.id) == RequestState.EXPIRED
    carol_grant = world.grant_of(carol_r.id)
    assert world.cleanup_jobs(carol_grant.id) == []
    assert [
        e["details"]["behind_grant"]
        for e in world.events(f"grant:{carol_grant.id}")
        if e["action"] == "grant.lapsed"
    ] == [world.grant_of(dave_r.id).id]
    # a lapsed request cannot be cancelled or revoked any more
    with pytest.raises(Conflict, match="the request is expired"):
        requests.cancel(world.node, carol, carol_r.id)


def test_a_queued_grant_asked_for_later_keeps_its_window_when_the_account_frees_early(
    world: World,
) -> None:
    """Checked in before a queued grant's start, the account goes to it, but it starts at its
    time, not at the check-in: a queued grant never starts outside the window it was approved
    for."""
    policies.apply_policy(world.node, world.admin, QUEUE)
    alice = world.user("alice", Role.REQUESTER)
    bob = world.user("bob", Role.REQUESTER)
    holder = requests.create_request(world.node, alice, ask("app_owner", T0 + timedelta(hours=1)))
    later = requests.create_request(world.node, bob, ask("app_owner", T0 + timedelta(hours=2)))
    g = world.grant_of(later.id)
    assert g.queued
    window = (g.starts_at, g.expires_at)
    assert window == (T0 + timedelta(hours=2), T0 + timedelta(hours=2, minutes=30))

    world.at(T0 + timedelta(minutes=5))
    requests.cancel(world.node, alice, holder.id)  # unused: checked in at once
    g = world.grant_of(later.id)
    assert (world.state(later.id), g.queued) == (RequestState.APPROVED, False)
    assert (g.starts_at, g.expires_at) == window
    assert live_grants(world, "app_owner") == 1  # bob's grant holds the account from now
    # and the audit log says so now, not at its start: who checked it in, who took it
    handover = [
        (e["action"], e["details"])
        for e in world.events("account:pg-prod/app_owner")
        if e["action"].startswith("account.checked_")
    ]
    held_by = world.grant_of(holder.id).id
    assert handover == [
        ("account.checked_out", {"grant_id": held_by, "from_queue": False}),
        ("account.checked_in", {"grant_id": held_by}),
        ("account.checked_out", {"grant_id": g.id, "from_queue": True}),
    ]

    assert grants.sweep(world.node, at=T0 + timedelta(hours=1, minutes=59)).started == 0
    assert world.state(later.id) == RequestState.APPROVED
    assert grants.sweep(world.node, at=T0 + timedelta(hours=2)).started == 1
    assert world.state(later.id) == RequestState.ACTIVE


def test_a_lapse_racing_a_check_in_either_starts_the_queued_grant_or_lapses_it(
    world: World,
) -> None:
    """A check-in (on a node whose clock is just before the queued grant's window ends) races a
    sweep that sees it ended: the grant either starts or lapses, never both, and the account has
    one holder at most."""
    policies.apply_policy(world.node, world.admin, QUEUE)
    alice = world.user("alice", Role.REQUESTER)
    bob = world.user("bob", Role.REQUESTER)
    outcomes = set()
    for trial in range(TRIALS):
        world.at(T0)
        account = world.account(f"shared_{trial}")
        held = requests.create_request(world.node, alice, ask(account, T0 + timedelta(hours=1)))
        waiting = requests.create_request(world.node, bob, ask(account))  # window ends 09:30
        world.at(T0 + timedelta(minutes=30) - timedelta(seconds=1))
        results = race(
            partial(grants.revoke_grant, world.node, world.admin, world.grant_of(held.id).id, "r"),
            partial(grants.sweep, world.node, T0 + timedelta(minutes=30)),
        )
        only_conflicts(results)
        state = world.state(waiting.id)
        outcomes.add(state)
        g = world.grant_of(waiting.id)
        assert not g.queued, trial
        if state == RequestState.ACTIVE:
            assert (g.ended_at, live_grants(world, account)) == (None, 1), trial
        else:
            assert state == RequestState.EXPIRED, trial
            assert live_grants(world, account) == 0, trial
        assert world.cleanup_jobs(g.id) == [], trial
        lapses = [e for e in world.events(f"grant:{g.id}") if e["action"] == "grant.lapsed"]
        activations = [e for e in world.events(f"grant:{g.id}") if e["action"] == "grant.activated"]
        assert len(lapses) + len(activations) == 1, trial
    assert outcomes <= {RequestState.ACTIVE, RequestState.EXPIRED}

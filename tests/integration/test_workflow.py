"""The just-in-time workflow's user stories on a real database (``--db sqlite|postgres``):
through the services, and through the HTTP API as the users themselves.

Time is the node's clock, moved by the tests (never slept on); the sweeper is the worker's
``grants.sweep``, called directly.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from jitvault import audit
from jitvault.domain import AccessKind, AccountMode, Outcome, Principal, Role, Sensitive
from jitvault.domain.requests import AccessRequest, RequestState
from jitvault.errors import Conflict, Forbidden, ValidationError
from jitvault.services import Node, grants, policies, requests, targets, users
from jitvault.services.requests import NewRequest
from jitvault.storage import tables as t
from jitvault.storage import workflow
from tests.conftest import Booted

README = Path(__file__).resolve().parents[2] / "README.md"
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def readme_policy() -> str:
    """The YAML block of the README's "Policies" section, verbatim."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Policies\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert match is not None, "README's Policies section has no yaml block"
    return match.group(1)


# --- a world to act in ---------------------------------------------------------------------------


@dataclass
class World:
    node: Node
    admin: Principal
    now: datetime = T0

    def at(self, when: datetime) -> None:
        self.now = when
        self.node.clock = lambda: self.now

    def user(self, name: str, role: Role, *groups: str) -> Principal:
        u = users.add_user(self.node, self.admin, name, role, list(groups))
        return Principal(u.id, u.name, u.role, u.groups)

    def ask(
        self,
        who: Principal,
        *,
        account: str = "app_owner",
        duration: timedelta = timedelta(minutes=30),
        reason: str = "INC-1234 fix replication slot",
        start_at: datetime | None = None,
        break_glass: bool = False,
        target: str = "pg-prod",
    ) -> AccessRequest:
        new = NewRequest(
            target, AccessKind.ACCOUNT, account, duration, reason, start_at, break_glass
        )
        return requests.create_request(self.node, who, new, source="test")

    def account(self, name: str) -> str:
        """Another shared account on pg-prod (a shared account serves one live grant at once)."""
        targets.add_account(
            self.node, self.admin, "pg-prod", name, AccountMode.INJECTED, Sensitive("pw-12345678")
        )
        return name

    def events(self, subject: str | None = None) -> list[dict[str, Any]]:
        with self.node.read() as conn:
            rows = audit.list_events(conn)
        return [e for e in rows if subject is None or e["subject"] == subject]

    def grant_rows(self, request_id: int) -> int:
        with self.node.read() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(t.grants)
                    .where(t.grants.c.request_id == request_id)
                ).scalar_one()
            )

    def cleanup_jobs(self, grant_id: int) -> list[Any]:
        with self.node.read() as conn:
            jobs = workflow.job_list(conn)
        return [
            j for j in jobs if j.kind == "grant.cleanup" and f'"grant_id": {grant_id}' in j.payload
        ]

    def state(self, request_id: int) -> RequestState:
        with self.node.read() as conn:
            return workflow.request_get(conn, request_id).state

    def grant_of(self, request_id: int) -> Any:
        with self.node.read() as conn:
            g = workflow.grant_for_request(conn, request_id)
        assert g is not None
        return g


def setup_world(booted: Booted) -> World:
    w = World(booted.node, booted.admin)
    w.at(T0)
    targets.add_target(
        w.node, w.admin, "pg-prod", "postgres", {"host": "127.0.0.1"}, labels={"env": "prod"}
    )
    targets.add_account(
        w.node, w.admin, "pg-prod", "app_owner", AccountMode.INJECTED, Sensitive("owner-pw-1234")
    )
    policies.apply_policy(w.node, w.admin, readme_policy(), source="test")
    return w


@pytest.fixture
def world(booted: Booted) -> World:
    return setup_world(booted)


@pytest.fixture
def cast(world: World) -> dict[str, Principal]:
    return {
        "alice": world.user("alice", Role.REQUESTER, "dev"),
        "olga": world.user("olga", Role.REQUESTER, "oncall"),
        "dba1": world.user("dba1", Role.APPROVER, "dba"),
        "dba2": world.user("dba2", Role.APPROVER, "dba"),
        "dba3": world.user("dba3", Role.APPROVER, "dba"),
        "outsider": world.user("outsider", Role.APPROVER, "sre"),
        "audrey": world.user("audrey", Role.AUDITOR),
    }


def one(events: list[dict[str, Any]], action: str) -> dict[str, Any]:
    found = [e for e in events if e["action"] == action]
    assert len(found) == 1, (action, [e["action"] for e in events])
    return found[0]


# --- the README's policy -------------------------------------------------------------------------


def test_the_readme_policy_parses_into_the_rules_it_describes() -> None:
    doc = policies.parse_policy(readme_policy())
    two, auto = doc.rules
    assert two.name == "prod-needs-two-dbas"
    assert (two.match.groups, two.match.targets, two.match.accounts) == (
        ["dev"],
        ["pg-prod"],
        ["app_owner"],
    )
    assert (two.require_approvals, two.approvers) == (2, ["dba"])
    assert (two.max_duration, two.max_connections) == (timedelta(hours=1), 5)
    assert two.break_glass == "denied"
    assert auto.name == "oncall-auto"
    assert (auto.match.groups, auto.match.targets, auto.match.reason) == (
        ["oncall"],
        ["pg-prod"],
        "^INC-[0-9]+",
    )
    assert auto.auto_approve
    assert (auto.max_duration, auto.break_glass) == (timedelta(minutes=30), "allowed")


def test_the_readme_policy_decides_as_the_readme_says(world: World) -> None:
    text = readme_policy()
    alice = world.user("alice", Role.REQUESTER, "dev")
    both = world.user("bea", Role.REQUESTER, "dev", "oncall")

    def check(who: Principal, duration: str, reason: str = "INC-7") -> Any:
        return policies.check_policy(
            world.node,
            world.admin,
            text,
            who.name,
            "pg-prod",
            AccessKind.ACCOUNT,
            "app_owner",
            timedelta(seconds=int(duration.rstrip("h")) * 3600),
            reason,
        )

    # "$ jitvault policy test policies.yaml --as alice ... --duration 2h"
    d = check(alice, "2h")
    assert d.outcome == Outcome.DENY
    assert d.explanation == "requested 2h exceeds max_duration 1h of rule 'prod-needs-two-dbas'"
    assert d.rule == "prod-needs-two-dbas"
    # "a user in both dev and oncall asking for app_owner with reason INC-7 gets
    # prod-needs-two-dbas (3 criteria) rather than oncall-auto (3 criteria, less strict)"
    d = check(both, "1h")
    assert (d.outcome, d.rule, d.required_approvals) == (
        Outcome.REQUIRE_APPROVALS,
        "prod-needs-two-dbas",
        2,
    )


# --- auto-approve --------------------------------------------------------------------------------


def test_auto_approve_creates_an_active_grant_expiring_at_start_plus_duration(
    world: World, cast: dict[str, Principal]
) -> None:
    r = world.ask(cast["olga"], duration=timedelta(minutes=20))
    assert r.state == RequestState.ACTIVE
    assert r.rule == "oncall-auto"
    g = world.grant_of(r.id)
    assert g.starts_at == T0
    assert g.expires_at == T0 + timedelta(minutes=20)
    assert g.user == "olga"
    assert (g.target, g.kind, g.name) == ("pg-prod", AccessKind.ACCOUNT, "app_owner")
    assert world.grant_rows(r.id) == 1
    evs = world.events(f"request:{r.id}")
    created = one(evs, "request.created")
    assert created["actor"] == "olga"
    assert created["details"]["reason"] == "INC-1234 fix replication slot"
    assert created["details"]["decision"]["rule"] == "oncall-auto"
    assert created["details"]["decision"]["outcome"] == "auto_approve"
    granted = one(world.events(f"grant:{g.id}"), "grant.created")
    assert granted["actor"] == "policy"
    assert granted["details"]["expires_at"] == (T0 + timedelta(minutes=20)).isoformat()
    one(world.events(f"grant:{g.id}"), "grant.activated")


def test_a_request_longer_than_max_duration_is_denied_not_shortened(
    world: World, cast: dict[str, Principal]
) -> None:
    r = world.ask(cast["olga"], duration=timedelta(minutes=31))
    assert r.state == RequestState.DENIED
    assert world.grant_rows(r.id) == 0
    denied = one(world.events(f"request:{r.id}"), "request.denied")
    assert denied["actor"] == "policy"
    assert denied["outcome"] == "denied"
    assert denied["details"]["rule"] == "oncall-auto"
    assert "exceeds max_duration 30m" in denied["details"]["reason"]


def test_a_request_no_rule_matches_is_denied_by_default(
    world: World, cast: dict[str, Principal]
) -> None:
    r = world.ask(cast["olga"], reason="no ticket")  # oncall-auto needs ^INC-
    assert r.state == RequestState.DENIED
    assert r.rule is None
    assert "deny by default" in r.explanation
    assert world.grant_rows(r.id) == 0
    assert one(world.events(f"request:{r.id}"), "request.denied")["actor"] == "policy"


def test_without_any_applied_policy_every_request_is_denied(booted: Booted) -> None:
    w = World(booted.node, booted.admin)
    w.at(T0)
    targets.add_target(w.node, w.admin, "pg-prod", "postgres", {"host": "127.0.0.1"})
    targets.add_account(
        w.node, w.admin, "pg-prod", "app_owner", AccountMode.INJECTED, Sensitive("owner-pw-1234")
    )
    r = w.ask(w.user("olga", Role.REQUESTER, "oncall"))
    assert r.state == RequestState.DENIED
    assert "no policy" in r.explanation
    assert w.grant_rows(r.id) == 0


# --- N of M approvals ----------------------------------------------------------------------------


def test_two_approver_rule_grants_exactly_once_after_two_distinct_approvers(
    world: World, cast: dict[str, Principal]
) -> None:
    r = world.ask(cast["alice"])
    assert r.state == RequestState.PENDING
    assert (r.rule, r.required_approvals, r.approver_groups) == ("prod-needs-two-dbas", 2, ("dba",))
    assert r.max_connections == 5

    r = requests.approve(world.node, cast["dba1"], r.id, "looks fine")
    assert r.state == RequestState.PENDING
    assert r.approvals == ("dba1",)
    assert world.grant_rows(r.id) == 0

    # the same approver again counts once
    r = requests.approve(world.node, cast["dba1"], r.id, "again")
    assert r.state == RequestState.PENDING
    assert r.approvals == ("dba1",)
    assert world.grant_rows(r.id) == 0

    r = requests.approve(world.node, cast["dba2"], r.id, "ok")
    assert r.state == RequestState.ACTIVE
    assert r.approvals == ("dba1", "dba2")
    assert world.grant_rows(r.id) == 1
    g = world.grant_of(r.id)
    assert g.max_connections == 5
    assert g.expires_at == g.starts_at + timedelta(minutes=30)

    # a third approval has nothing left to decide
    with pytest.raises(Conflict):
        requests.approve(world.node, cast["dba3"], r.id)
    assert world.grant_rows(r.id) == 1

    evs = world.events(f"request:{r.id}")
    approvals = [e for e in evs if e["action"] == "request.approved"]
    assert [(e["actor"], e["details"]["approvals"]) for e in approvals] == [
        ("dba1", 1),
        ("dba2", 2),
    ]
    assert all(e["details"]["rule"] == "prod-needs-two-dbas" for e in approvals)
    assert approvals[0]["details"]["comment"] == "looks fine"
    assert one(world.events(f"grant:{g.id}"), "grant.created")["actor"] == "dba2"


def test_approvers_outside_the_rules_groups_and_non_approver_roles_cannot_decide(
    world: World, cast: dict[str, Principal]
) -> None:
    r = world.ask(cast["alice"])
    for who in (cast["outsider"], cast["audrey"], cast["olga"]):
        with pytest.raises(Forbidden):
            requests.approve(world.node, who, r.id)
        with pytest.raises(Forbidden):
            requests.deny(world.node, who, r.id, "no")
    after = requests.get_request(world.node, world.admin, r.id)
    assert (after.state, after.approvals) == (RequestState.PENDING, ())


def test_the_requester_never_approves_their_own_request_even_as_admin_in_the_approver_group(
    world: World,
) -> None:
    boss = world.user("boss", Role.ADMIN, "dev", "dba")
    dba = world.user("dba1", Role.APPROVER, "dba")
    r = world.ask(boss)
    assert r.rule == "prod-needs-two-dbas"
    for _ in range(2):
        with pytest.raises(Forbidden):
            requests.approve(world.node, boss, r.id)
    with pytest.raises(Forbidden):
        requests.deny(world.node, boss, r.id, "mine")
    r = requests.approve(world.node, dba, r.id)
    assert (r.state, r.approvals) == (RequestState.PENDING, ("dba1",))
    assert world.grant_rows(r.id) == 0
    # the pending list shows an approver what they may decide, never their own request
    assert r.id not in [x.id for x in requests.list_requests(world.node, boss, pending=True)]


# --- deny and cancel -----------------------------------------------------------------------------


def test_an_approver_denies_with_a_reason_and_the_request_stays_denied(
    world: World, cast: dict[str, Principal]
) -> None:
    r = world.ask(cast["alice"])
    requests.approve(world.node, cast["dba1"], r.id)
    with pytest.raises(ValidationError):
        requests.deny(world.node, cast["dba2"], r.id, "  ")
    world.at(T0 + timedelta(minutes=5))
    r = requests.deny(world.node, cast["dba2"], r.id, "not during the freeze")
    assert r.state == RequestState.DENIED
    assert r.decided_at == T0 + timedelta(minutes=5)
    with pytest.raises(Conflict):
        requests.approve(world.node, cast["dba3"], r.id)
    with pytest.raises(Conflict):
        requests.deny(world.node, cast["dba3"], r.id, "again")
    assert world.state(r.id) == RequestState.DENIED
    assert world.grant_rows(r.id) == 0
    denied = one(world.events(f"request:{r.id}"), "request.denied")
    assert denied["actor"] == "dba2"
    assert denied["outcome"] == "denied"
    assert denied["details"] == {"reason": "not during the freeze", "rule": "prod-needs-two-dbas"}
    assert denied["ts"]


def test_the_requester_cancels_a_pending_request_and_nobody_else_can(
    world: World, cast: dict[str, Principal]
) -> None:
    r = world.ask(cast["alice"])
    with pytest.raises(Forbidden):
        requests.cancel(world.node, cast["olga"], r.id)
    r = requests.cancel(world.node, cast["alice"], r.id)
    assert r.state == RequestState.CANCELLED
    with pytest.raises(Conflict):
        requests.approve(world.node, cast["dba1"], r.id)
    with pytest.raises(Conflict):
        requests.cancel(world.node, cast["alice"], r.id)
    ev = one(world.events(f"request:{r.id}"), "request.cancelled")
    assert (ev["actor"], ev["details"]["previous_state"]) == ("alice", "pending")


def test_a_scheduled_grant_can_be_cancelled_before_it_starts_but_not_after(
    world: World, cast: dict[str, Principal]
) -> None:
    later = world.ask(cast["olga"], start_at=T0 + timedelta(hours=2))
    assert later.state == RequestState.APPROVED
    cancelled = requests.cancel(world.node, cast["olga"], later.id)
    assert cancelled.state == RequestState.CANCELLED
    g = world.grant_of(later.id)
    assert g.ended_at == T0
    world.at(T0 + timedelta(hours=2, minutes=1))
    grants.sweep(world.node)
    assert world.state(later.id) == RequestState.CANCELLED
    assert world.cleanup_jobs(g.id) == []

    now = world.ask(cast["olga"])
    assert now.state == RequestState.ACTIVE
    with pytest.raises(Conflict):
        requests.cancel(world.node, cast["olga"], now.id)


# --- scheduled start, expiry, revoke -------------------------------------------------------------


def test_a_scheduled_grant_starts_when_the_sweeper_runs_after_its_start_time(
    world: World, cast: dict[str, Principal]
) -> None:
    start = T0 + timedelta(hours=3)
    r = world.ask(cast["olga"], start_at=start, duration=timedelta(minutes=15))
    assert r.state == RequestState.APPROVED
    g = world.grant_of(r.id)
    assert (g.starts_at, g.expires_at) == (start, start + timedelta(minutes=15))

    world.at(start - timedelta(seconds=1))
    assert grants.sweep(world.node).started == 0
    assert world.state(r.id) == RequestState.APPROVED

    world.at(start + timedelta(seconds=5))
    assert grants.sweep(world.node).started == 1
    assert world.state(r.id) == RequestState.ACTIVE
    one(world.events(f"grant:{g.id}"), "grant.activated")
    assert grants.sweep(world.node).started == 0  # once

    world.at(start + timedelta(minutes=15))
    assert grants.sweep(world.node).ended == 1
    assert world.state(r.id) == RequestState.ENDED


def test_the_sweeper_ends_a_grant_on_time_and_queues_its_cleanup(
    world: World, cast: dict[str, Principal]
) -> None:
    r = world.ask(cast["olga"], duration=timedelta(minutes=30))
    g = world.grant_of(r.id)

    world.at(T0 + timedelta(minutes=29, seconds=59))
    assert grants.sweep(world.node).ended == 0
    assert world.state(r.id) == RequestState.ACTIVE
    assert world.cleanup_jobs(g.id) == []

    world.at(T0 + timedelta(minutes=30))
    assert grants.sweep(world.node).ended == 1
    assert world.state(r.id) == RequestState.ENDED
    g = world.grant_of(r.id)
    assert (g.ended_at, g.end_reason) == (T0 + timedelta(minutes=30), "expired")
    jobs = world.cleanup_jobs(g.id)
    assert len(jobs) == 1
    assert jobs[0].state == "queued"
    ended = one(world.events(f"grant:{g.id}"), "grant.ended")
    assert ended["actor"] == "system"
    assert ended["details"]["cleanup_queued"] is True
    assert ended["details"]["reason"] == "expired"

    world.at(T0 + timedelta(hours=5))
    assert grants.sweep(world.node).ended == 0  # ends once
    assert len(world.cleanup_jobs(g.id)) == 1
    assert grants.list_grants(world.node, world.admin) == []


def test_revoke_ends_the_grant_now_and_only_once(world: World, cast: dict[str, Principal]) -> None:
    r = world.ask(cast["olga"])
    g = world.grant_of(r.id)
    with pytest.raises(Forbidden):
        grants.revoke_grant(world.node, cast["olga"], g.id, "mine")
    with pytest.raises(ValidationError):
        grants.revoke_grant(world.node, cast["dba1"], g.id, "")
    world.at(T0 + timedelta(minutes=3))
    revoked = grants.revoke_grant(world.node, cast["dba1"], g.id, "done early")
    assert revoked.state == RequestState.REVOKED
    assert (revoked.ended_at, revoked.end_reason) == (T0 + timedelta(minutes=3), "done early")
    assert len(world.cleanup_jobs(g.id)) == 1
    with pytest.raises(Conflict):
        grants.revoke_grant(world.node, cast["dba2"], g.id, "again")
    world.at(T0 + timedelta(hours=1))
    assert grants.sweep(world.node).ended == 0
    assert world.state(r.id) == RequestState.REVOKED
    evs = world.events(f"grant:{g.id}")
    ev = one(evs, "grant.revoked")
    assert (ev["actor"], ev["details"]["reason"]) == ("dba1", "done early")
    assert not [e for e in evs if e["action"] == "grant.ended"]
    assert len(world.cleanup_jobs(g.id)) == 1


def test_a_pending_request_past_its_ttl_expires_and_cannot_be_approved_after(
    world: World, cast: dict[str, Principal]
) -> None:
    r = world.ask(cast["alice"])
    assert r.expires_at == T0 + timedelta(hours=1)  # the default request_ttl
    requests.approve(world.node, cast["dba1"], r.id)

    world.at(T0 + timedelta(minutes=59))
    assert grants.sweep(world.node).expired_requests == 0
    world.at(T0 + timedelta(hours=1))
    assert grants.sweep(world.node).expired_requests == 1
    assert world.state(r.id) == RequestState.EXPIRED
    with pytest.raises(Conflict):
        requests.approve(world.node, cast["dba2"], r.id)
    assert world.state(r.id) == RequestState.EXPIRED
    assert world.grant_rows(r.id) == 0
    ev = one(world.events(f"request:{r.id}"), "request.expired")
    assert ev["actor"] == "system"


def test_approving_after_the_ttl_without_a_sweep_expires_the_request_instead(
    world: World, cast: dict[str, Principal]
) -> None:
    r = world.ask(cast["alice"])
    requests.approve(world.node, cast["dba1"], r.id)
    world.at(T0 + timedelta(hours=1, seconds=1))
    with pytest.raises(Conflict) as err:
        requests.approve(world.node, cast["dba2"], r.id)
    assert "expired" in err.value.message
    assert world.state(r.id) == RequestState.EXPIRED  # the lapse is kept, not rolled back
    assert world.grant_rows(r.id) == 0
    one(world.events(f"request:{r.id}"), "request.expired")


def test_the_sweep_finishes_when_more_scheduled_windows_passed_unused_than_one_batch(
    world: World, cast: dict[str, Principal]
) -> None:
    ids = [
        world.ask(
            cast["olga"],
            account=world.account(f"app_{i}"),
            start_at=T0 + timedelta(minutes=10),
            duration=timedelta(minutes=5),
        ).id
        for i in range(5)
    ]
    world.at(T0 + timedelta(hours=2))
    done: list[grants.SweepResult] = []
    sweeper = threading.Thread(
        target=lambda: done.append(grants.sweep(world.node, batch=2)), daemon=True
    )
    sweeper.start()
    sweeper.join(60)
    assert not sweeper.is_alive(), "the sweep did not finish"
    assert done[0].ended == 5
    assert [world.state(i) for i in ids] == [RequestState.ENDED] * 5


# --- break-glass ---------------------------------------------------------------------------------


def test_break_glass_is_granted_at_once_audited_and_flagged_until_someone_else_reviews(
    world: World, cast: dict[str, Principal]
) -> None:
    r = world.ask(
        cast["olga"], reason="INC-99 outage", break_glass=True, duration=timedelta(minutes=15)
    )
    assert r.state == RequestState.ACTIVE
    assert (r.break_glass, r.review_required, r.reviewed_by) == (True, True, None)
    g = world.grant_of(r.id)
    assert g.break_glass

    evs = world.events(f"request:{r.id}")
    created = one(evs, "request.created")
    assert created["details"]["break_glass"] is True
    assert created["details"]["reason"] == "INC-99 outage"
    bg = one(evs, "request.break_glass")
    assert bg["actor"] == "olga"
    assert bg["details"] == {
        "reason": "INC-99 outage",
        "rule": "oncall-auto",
        "review_required": True,
    }
    gc = one(world.events(f"grant:{g.id}"), "grant.created")
    assert gc["details"]["break_glass"] is True
    assert created["seq"] < bg["seq"] < gc["seq"]

    awaiting = requests.list_requests(world.node, cast["audrey"], review=True)
    assert [x.id for x in awaiting] == [r.id]
    with pytest.raises(Forbidden):
        requests.review(world.node, cast["olga"], r.id)  # requester role may not review
    selfish = world.user("oncall-admin", Role.ADMIN, "oncall")
    own = world.ask(
        selfish, account=world.account("ops_owner"), reason="INC-100 outage", break_glass=True
    )
    with pytest.raises(Forbidden):
        requests.review(world.node, selfish, own.id)  # nobody reviews their own
    reviewed = requests.review(world.node, cast["audrey"], r.id, "checked")
    assert reviewed.reviewed_by == "audrey"
    assert reviewed.review_required  # the flag stays; the review closes it
    with pytest.raises(Conflict):
        requests.review(world.node, cast["dba1"], r.id)
    assert [x.id for x in requests.list_requests(world.node, cast["audrey"], review=True)] == [
        own.id
    ]
    ev = one(world.events(f"request:{r.id}"), "request.reviewed")
    assert (ev["actor"], ev["details"]["comment"]) == ("audrey", "checked")


def test_break_glass_is_denied_where_the_deciding_rule_does_not_allow_it(
    world: World, cast: dict[str, Principal]
) -> None:
    r = world.ask(cast["alice"], break_glass=True)
    assert r.state == RequestState.DENIED
    assert r.rule == "prod-needs-two-dbas"
    assert "does not allow break-glass" in r.explanation
    assert world.grant_rows(r.id) == 0
    evs = world.events(f"request:{r.id}")
    assert not [e for e in evs if e["action"] == "request.break_glass"]
    assert "does not allow break-glass" in one(evs, "request.denied")["details"]["reason"]
    with pytest.raises(ValidationError):
        world.ask(cast["olga"], break_glass=True, start_at=T0 + timedelta(hours=1))


def test_a_normal_grant_needs_no_review(world: World, cast: dict[str, Principal]) -> None:
    r = world.ask(cast["olga"])
    assert not r.review_required
    with pytest.raises(Conflict):
        requests.review(world.node, cast["audrey"], r.id)


# --- through the HTTP API, as the users themselves -----------------------------------------------


class Api:
    def __init__(self, client: TestClient) -> None:
        self.client = client

    def user(self, name: str, role: str, *groups: str) -> dict[str, str]:
        r = self.client.post("/v1/users", json={"name": name, "role": role, "groups": list(groups)})
        assert r.status_code == 201, r.text
        r = self.client.post(f"/v1/users/{name}/tokens", json={"description": "test"})
        assert r.status_code == 201, r.text
        return {"Authorization": f"Bearer {r.json()['token']}"}

    def call(
        self, method: str, path: str, who: dict[str, str] | None, status: int, **kw: Any
    ) -> Any:
        r = self.client.request(method, path, headers=who, **kw)
        assert r.status_code == status, (method, path, r.status_code, r.text)
        return r.json() if r.content else None


@pytest.fixture
def http(api: TestClient, booted: Booted) -> Api:
    booted.node.clock = lambda: T0
    a = Api(api)
    a.call("POST", "/v1/targets", None, 201, json={
        "name": "pg-prod", "kind": "postgres", "options": {"host": "127.0.0.1"},
    })  # fmt: skip
    a.call("POST", "/v1/targets/pg-prod/accounts", None, 201, json={
        "username": "app_owner", "mode": "injected", "password": "owner-pw-1234",
    })  # fmt: skip
    a.call("POST", "/v1/targets/pg-prod/accounts", None, 201, json={
        "username": "ops_owner", "mode": "injected", "password": "owner-pw-5678",
    })  # fmt: skip
    a.call("PUT", "/v1/policies", None, 200, json={"document": readme_policy()})
    return a


BODY = {
    "target": "pg-prod",
    "account": "app_owner",
    "duration": "30m",
    "reason": "INC-1234 fix replication slot",
}


def test_api_auto_approve_two_approvers_and_revoke_as_the_users(http: Api, booted: Booted) -> None:
    olga = http.user("olga", "requester", "oncall")
    alice = http.user("alice", "requester", "dev")
    dba1 = http.user("dba1", "approver", "dba")
    dba2 = http.user("dba2", "approver", "dba")

    auto = http.call(
        "POST", "/v1/requests", olga, 201, json={**BODY, "account": "ops_owner", "duration": "20m"}
    )
    assert (auto["state"], auto["rule"]) == ("active", "oncall-auto")
    g = http.call("GET", f"/v1/grants/{auto['grant_id']}", olga, 200)
    assert datetime.fromisoformat(g["expires_at"]) == T0 + timedelta(minutes=20)
    assert g["seconds_left"] == 20 * 60

    r = http.call("POST", "/v1/requests", alice, 201, json=BODY)
    assert (r["state"], r["required_approvals"], r["grant_id"]) == ("pending", 2, None)
    http.call("POST", f"/v1/requests/{r['id']}/approve", alice, 403, json={})
    one_ok = http.call("POST", f"/v1/requests/{r['id']}/approve", dba1, 200, json={})
    assert (one_ok["state"], one_ok["approvals"]) == ("pending", ["dba1"])
    again = http.call("POST", f"/v1/requests/{r['id']}/approve", dba1, 200, json={})
    assert (again["state"], again["approvals"]) == ("pending", ["dba1"])
    pending = http.call("GET", "/v1/requests", dba2, 200, params={"pending": True})
    assert [x["id"] for x in pending] == [r["id"]]
    done = http.call("POST", f"/v1/requests/{r['id']}/approve", dba2, 200, json={"comment": "ok"})
    assert done["state"] == "active"
    assert done["grant_id"] is not None
    live = http.call("GET", "/v1/grants", alice, 200)
    assert [x["id"] for x in live] == [done["grant_id"]]

    revoked = http.call(
        "POST", f"/v1/grants/{done['grant_id']}/revoke", dba1, 200, json={"reason": "done"}
    )
    assert (revoked["state"], revoked["seconds_left"]) == ("revoked", 0)
    http.call("POST", f"/v1/grants/{done['grant_id']}/revoke", dba2, 409, json={"reason": "x"})
    http.call("POST", f"/v1/grants/{done['grant_id']}/revoke", alice, 403, json={"reason": "x"})
    assert http.call("GET", "/v1/grants", alice, 200) == []


def test_api_admin_in_the_approver_group_cannot_approve_their_own_request(http: Api) -> None:
    boss = http.user("boss", "admin", "dev", "dba")
    r = http.call("POST", "/v1/requests", boss, 201, json=BODY)
    assert r["state"] == "pending"
    err = http.call("POST", f"/v1/requests/{r['id']}/approve", boss, 403, json={})
    assert "own request" in err["error"]["message"]
    http.call("POST", f"/v1/requests/{r['id']}/deny", boss, 403, json={"reason": "x"})
    assert http.call("GET", f"/v1/requests/{r['id']}", boss, 200)["approvals"] == []


def test_api_deny_cancel_expiry_and_break_glass_review(http: Api, booted: Booted) -> None:
    alice = http.user("alice", "requester", "dev")
    olga = http.user("olga", "requester", "oncall")
    dba1 = http.user("dba1", "approver", "dba")
    audrey = http.user("audrey", "auditor")

    r = http.call("POST", "/v1/requests", alice, 201, json=BODY)
    d = http.call("POST", f"/v1/requests/{r['id']}/deny", dba1, 200, json={"reason": "freeze"})
    assert d["state"] == "denied"
    http.call("POST", f"/v1/requests/{r['id']}/approve", dba1, 409, json={})

    too_long = http.call("POST", "/v1/requests", alice, 201, json={**BODY, "duration": "2h"})
    assert too_long["state"] == "denied"
    assert "exceeds max_duration 1h" in too_long["explanation"]

    c = http.call("POST", "/v1/requests", alice, 201, json=BODY)
    http.call("POST", f"/v1/requests/{c['id']}/cancel", olga, 403)
    assert http.call("POST", f"/v1/requests/{c['id']}/cancel", alice, 200)["state"] == "cancelled"

    e = http.call("POST", "/v1/requests", alice, 201, json=BODY)
    booted.node.clock = lambda: T0 + timedelta(hours=2)
    http.call("POST", f"/v1/requests/{e['id']}/approve", dba1, 409, json={})
    assert http.call("GET", f"/v1/requests/{e['id']}", alice, 200)["state"] == "expired"

    bg = http.call(
        "POST",
        "/v1/requests",
        olga,
        201,
        json={**BODY, "reason": "INC-9 down", "break_glass": True},
    )
    assert (bg["state"], bg["break_glass"], bg["review_required"]) == ("active", True, True)
    nope = http.call("POST", "/v1/requests", alice, 201, json={**BODY, "break_glass": True})
    assert nope["state"] == "denied"
    waiting = http.call("GET", "/v1/requests", audrey, 200, params={"review": True})
    assert [x["id"] for x in waiting] == [bg["id"]]
    http.call("POST", f"/v1/requests/{bg['id']}/review", olga, 403, json={})
    rv = http.call("POST", f"/v1/requests/{bg['id']}/review", audrey, 200, json={"comment": "ok"})
    assert rv["reviewed_by"] == "audrey"
    assert http.call("GET", "/v1/requests", audrey, 200, params={"review": True}) == []

    trail = [
        e
        for e in http.call("GET", "/v1/audit/events", None, 200)
        if e["subject"] == f"request:{bg['id']}"
    ]
    actions = [e["action"] for e in trail]
    assert actions[:2] == ["request.created", "request.break_glass"]
    assert "request.reviewed" in actions

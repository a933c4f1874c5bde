"""The session registry cuts live sessions at expiry and when their row was ended elsewhere."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from jitvault.domain import AccessKind, AccountMode, Principal, Role, Sensitive
from jitvault.proxy import SessionRegistry
from jitvault.services import grants, policies, requests, sessions, targets, users
from jitvault.services.requests import NewRequest
from tests.conftest import Booted


class Handle:
    """A session handle that remembers why it was closed."""

    def __init__(self, session_id: int) -> None:
        self.session_id = session_id
        self.reasons: list[str] = []

    async def close(self, reason: str) -> None:
        self.reasons.append(reason)


def _open(booted: Booted, minutes: int = 30) -> tuple[sessions.SessionTicket, Principal]:
    node, admin = booted.node, booted.admin
    targets.add_target(node, admin, "db1", "postgres", {"host": "127.0.0.1"})
    targets.add_account(node, admin, "db1", "app", AccountMode.INJECTED, Sensitive("pw-12345678"))
    policies.apply_policy(
        node, admin, "rules:\n  - name: a\n    match: {targets: [db1]}\n    auto_approve: true\n"
    )
    u = users.add_user(node, admin, "alice", Role.REQUESTER)
    alice = Principal(u.id, u.name, u.role, u.groups)
    r = requests.create_request(
        node, alice, NewRequest("db1", AccessKind.ACCOUNT, "app", timedelta(minutes=minutes), "x")
    )
    token, _ = sessions.issue_session_token(node, alice, r.id)
    return sessions.open_session(node, token, "postgres"), alice


def test_a_revoked_grant_cuts_its_session_on_the_next_pass(booted: Booted) -> None:
    ticket, _ = _open(booted)
    registry = SessionRegistry(booted.node)
    handle = Handle(ticket.session_id)
    registry.add(handle, ticket.grant.expires_at)
    assert asyncio.run(registry.sweep_once()) == 0
    assert handle.reasons == []
    grants.revoke_grant(booted.node, booted.admin, ticket.grant.id, "incident over")
    assert asyncio.run(registry.sweep_once()) == 1
    assert handle.reasons == ["access grant revoked"]
    assert len(registry) == 0


def test_an_expiring_grant_cuts_its_session_without_waiting_for_the_sweeper(
    booted: Booted,
) -> None:
    ticket, _ = _open(booted)
    registry = SessionRegistry(booted.node)
    handle = Handle(ticket.session_id)
    registry.add(handle, ticket.grant.expires_at)
    later = ticket.grant.expires_at + timedelta(seconds=1)
    assert asyncio.run(registry.sweep_once(now=lambda: later)) == 1
    assert handle.reasons == ["access grant expired"]


def test_a_handle_that_fails_to_close_does_not_stop_the_others(booted: Booted) -> None:
    ticket, _ = _open(booted)

    class Broken(Handle):
        async def close(self, reason: str) -> None:
            raise RuntimeError("socket already gone")

    registry = SessionRegistry(booted.node)
    good = Handle(ticket.session_id)
    registry.add(Broken(10_000_001), ticket.grant.expires_at - timedelta(hours=1))
    registry.add(good, ticket.grant.expires_at - timedelta(hours=1))
    assert asyncio.run(registry.sweep_once()) == 2
    assert good.reasons == ["access grant expired"]


def test_a_session_no_node_holds_is_ended_as_lost_and_a_held_one_is_not(booted: Booted) -> None:
    node = booted.node
    lost_after = timedelta(seconds=node.settings.server.session_lost_seconds)
    ticket, alice = _open(booted)
    held = sessions.open_session(
        node,
        sessions.issue_session_token(node, alice, ticket.grant.request_id)[0],
        "postgres",
    )
    registry = SessionRegistry(node)
    registry.add(Handle(held.session_id), held.grant.expires_at)
    start = node.clock()
    node.clock = lambda: start + lost_after * 0.9
    asyncio.run(registry.heartbeat())  # this node holds one of the two
    assert sessions.end_lost_sessions(node) == 0  # neither is lost yet
    node.clock = lambda: start + lost_after * 1.5
    assert sessions.end_lost_sessions(node) == 1  # the unheld one, counted from its start
    assert sessions.ended_among(node, [ticket.session_id, held.session_id]) == {
        ticket.session_id: sessions.LOST_REASON
    }
    assert sessions.end_lost_sessions(node) == 0  # ended once
    node.clock = lambda: start + lost_after * 2
    assert sessions.end_lost_sessions(node) == 1  # the heartbeat stopped too

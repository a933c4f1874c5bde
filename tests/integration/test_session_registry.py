"""The session registry cuts live sessions at expiry and when their row was ended elsewhere."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from jitvault.domain import AccessKind, AccountMode, Principal, Role, Sensitive
from jitvault.plugin_api import NODE_STOPPING, Cut
from jitvault.proxy import SessionRegistry
from jitvault.services import grants, policies, requests, sessions, targets, users
from jitvault.services.requests import NewRequest
from tests.conftest import Booted


class Handle:
    """A session handle that remembers why it was closed."""

    def __init__(self, session_id: int) -> None:
        self.session_id = session_id
        self.reasons: list[str] = []

    async def close(self, cut: Cut) -> None:
        self.reasons.append(cut.reason)


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
    registry.add(handle, ticket.grant.expires_at, ticket.grant.id)
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
    registry.add(handle, ticket.grant.expires_at, ticket.grant.id)
    later = ticket.grant.expires_at + timedelta(seconds=1)
    assert asyncio.run(registry.sweep_once(now=lambda: later)) == 1
    assert handle.reasons == ["access grant expired"]


def test_a_handle_that_fails_to_close_does_not_stop_the_others(booted: Booted) -> None:
    ticket, _ = _open(booted)

    class Broken(Handle):
        async def close(self, cut: Cut) -> None:
            raise RuntimeError("socket already gone")

    registry = SessionRegistry(booted.node)
    good = Handle(ticket.session_id)
    registry.add(Broken(10_000_001), ticket.grant.expires_at - timedelta(hours=1), 1)
    registry.add(good, ticket.grant.expires_at - timedelta(hours=1), ticket.grant.id)
    assert asyncio.run(registry.sweep_once()) == 2
    assert good.reasons == ["access grant expired"]


def test_a_login_waits_only_for_the_end_of_a_session_of_its_own_grant(booted: Booted) -> None:
    ticket, _ = _open(booted)
    grant = ticket.grant

    async def scenario() -> None:
        registry = SessionRegistry(booted.node)
        assert not await registry.an_end_recorded(grant.id, since=0)  # nothing held: no wait
        registry.add(Handle(1), grant.expires_at, grant.id)
        registry.add(Handle(2), grant.expires_at, grant.id + 1)
        registry.add(Handle(3), grant.expires_at, grant.id)
        registry.add(Handle(4), grant.expires_at, grant.id + 2)
        registry.ended(3)
        # an end recorded after the login looked, before it waited: no wait either
        assert await registry.an_end_recorded(grant.id, since=0)
        registry.ended(4)  # another grant's end since: it frees no place of this grant
        waiting = asyncio.ensure_future(registry.an_end_recorded(grant.id, since=1))
        await asyncio.sleep(0.05)
        registry.remove(1)  # the client closed; the end is being recorded
        registry.ended(2)  # another grant's session: not what the login waits for
        await asyncio.sleep(0.05)
        assert not waiting.done()
        registry.ended(1)
        assert await asyncio.wait_for(waiting, 1.0)
        assert registry.held == 0

    asyncio.run(scenario())


def test_a_stopping_node_cuts_a_session_registered_after_the_rest_and_its_grant_lives(
    booted: Booted,
) -> None:
    """A login that finishes while the node stops is cut like the sessions already there, not
    left running until the process goes (then ended as lost, with no word to its client)."""
    ticket, _ = _open(booted)
    grant = ticket.grant

    async def scenario() -> None:
        registry = SessionRegistry(booted.node)
        early, late = Handle(1), Handle(2)
        registry.add(early, grant.expires_at, grant.id)
        registry.add(Handle(3), grant.expires_at, grant.id)
        registry.remove(3)  # its client is closing it: its end is being recorded
        stopping = asyncio.ensure_future(registry.cut_all(NODE_STOPPING))
        await asyncio.sleep(0.05)
        assert early.reasons == [NODE_STOPPING.reason]
        registry.add(late, grant.expires_at, grant.id)
        await asyncio.sleep(0.05)
        assert late.reasons == [NODE_STOPPING.reason]
        # their ends do not end an --end-on-disconnect grant; a session ending on its own does
        assert registry.grant_lives(1)
        assert registry.grant_lives(2)
        assert not registry.grant_lives(3)
        registry.ended(1)
        registry.ended(3)
        assert not stopping.done()  # the late one's end is not recorded yet
        registry.ended(2)
        await asyncio.wait_for(stopping, 1.0)

    asyncio.run(scenario())


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
    registry.add(Handle(held.session_id), held.grant.expires_at, held.grant.id)
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

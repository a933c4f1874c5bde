"""Session tokens: bound to a live grant, single use under races, max_connections, and revoke
racing session open with one outcome. On SQLite and PostgreSQL (``--db``)."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from jitvault.domain import AccessKind, AccountMode, Principal, Role, Sensitive
from jitvault.errors import AuthError, Conflict, Forbidden
from jitvault.services import Node, grants, policies, requests, sessions, targets, users
from jitvault.services.requests import NewRequest
from jitvault.storage import tables as t
from tests.conftest import Booted, grant_id_of

POLICY = """
rules:
  - name: auto
    match: {targets: [db1]}
    auto_approve: true
    max_duration: 1h
    max_connections: 2
"""


class World:
    def __init__(self, booted: Booted) -> None:
        self.node: Node = booted.node
        self.admin = booted.admin
        targets.add_target(self.node, self.admin, "db1", "postgres", {"host": "127.0.0.1"})
        targets.add_account(
            self.node, self.admin, "db1", "app", AccountMode.INJECTED, Sensitive("pw-app-12345")
        )
        policies.apply_policy(self.node, self.admin, POLICY)
        self.alice = self.principal("alice", Role.REQUESTER)
        self.bob = self.principal("bob", Role.REQUESTER)
        self._grants = 0

    def principal(self, name: str, role: Role) -> Principal:
        u = users.add_user(self.node, self.admin, name, role)
        return Principal(u.id, u.name, u.role, u.groups)

    def grant(self, who: Principal | None = None) -> int:
        """A live grant of a shared account: "app" first, then a fresh account each time (a
        shared account serves one live grant at a time)."""
        account = "app"
        if self._grants:
            account = f"app{self._grants}"
            targets.add_account(
                self.node, self.admin, "db1", account, AccountMode.INJECTED, Sensitive("pw-123456")
            )
        self._grants += 1
        r = requests.create_request(
            self.node,
            who or self.alice,
            NewRequest("db1", AccessKind.ACCOUNT, account, timedelta(minutes=30), "INC-1"),
        )
        assert r.state.value == "active"
        return r.id

    def token(self, request_id: int, once: bool = False) -> Sensitive[str]:
        token, _ = sessions.issue_session_token(self.node, self.alice, request_id, once)
        return token

    def refusals(self) -> list[Any]:
        with self.node.read() as conn:
            rows = conn.execute(
                select(t.audit_events.c.details).where(t.audit_events.c.action == "session.refused")
            ).all()
        return [r.details for r in rows]

    def live(self, grant_id: int) -> int:
        with self.node.read() as conn:
            rows = conn.execute(
                select(t.sessions.c.id).where(
                    t.sessions.c.grant_id == grant_id, t.sessions.c.ended_at.is_(None)
                )
            ).all()
        return len(rows)


@pytest.fixture
def world(booted: Booted) -> World:
    return World(booted)


def test_a_token_opens_a_session_bound_to_its_grant(world: World) -> None:
    rid = world.grant()
    ticket = sessions.open_session(world.node, world.token(rid), "postgres", "127.0.0.1")
    assert ticket.grant.request_id == rid
    assert ticket.grant.name == "app"
    assert world.live(ticket.grant.id) == 1
    assert sessions.close_session(world.node, ticket.session_id)
    assert not sessions.close_session(world.node, ticket.session_id)  # idempotent
    assert world.live(ticket.grant.id) == 0


def test_every_refusal_says_the_same_to_the_client_and_the_reason_to_the_audit_log(
    world: World,
) -> None:
    rid = world.grant()
    good = world.token(rid).reveal()
    prefix, token_id, _ = good.split("_", 2)
    once = world.token(rid, once=True)
    sessions.open_session(world.node, once, "postgres")
    ended_rid = world.grant()
    ended = world.token(ended_rid)
    g = grant_id_of(world.node, requests.get_request(world.node, world.alice, ended_rid))
    grants.revoke_grant(world.node, world.admin, g, "done")
    bad = {
        "malformed": Sensitive("not-a-token"),
        "api token": Sensitive(f"jvt_{token_id}_{'A' * 43}"),
        "unknown": Sensitive(f"{prefix}_{'0' * 16}_{'A' * 43}"),
        "wrong secret": Sensitive(f"{prefix}_{token_id}_{'B' * 43}"),
        "used once": once,
        "revoked grant": ended,
    }
    messages = set()
    for token in bad.values():
        with pytest.raises(AuthError) as err:
            sessions.open_session(world.node, token, "postgres", "127.0.0.1")
        messages.add((err.value.message, err.value.hint))
    assert messages == {("authentication failed", None)}
    reasons = Counter(r for r in world.refusals())
    assert sum(reasons.values()) == len(bad), "every refusal is audited"
    text = " ".join(str(r) for r in reasons)
    for why in ("malformed", "unknown", "wrong token secret", "already used", "revoked"):
        assert why in text


def test_a_token_stops_working_when_its_grant_ends_and_its_sessions_end_too(world: World) -> None:
    rid = world.grant()
    token = world.token(rid)
    ticket = sessions.open_session(world.node, token, "postgres")
    later = world.node.clock() + timedelta(hours=1)
    world.node.clock = lambda: later
    grants.sweep(world.node)
    assert world.live(ticket.grant.id) == 0, "an ended grant leaves no live session"
    with pytest.raises(AuthError):
        sessions.open_session(world.node, token, "postgres")


def test_max_connections_counts_live_sessions_of_the_grant(world: World) -> None:
    rid = world.grant()
    token = world.token(rid)
    first = sessions.open_session(world.node, token, "postgres")
    sessions.open_session(world.node, token, "postgres")
    with pytest.raises(sessions.TooManySessions):
        sessions.open_session(world.node, token, "postgres")
    sessions.close_session(world.node, first.session_id)
    sessions.open_session(world.node, token, "postgres")  # a freed slot is usable again


def test_only_the_requester_gets_tokens_and_only_for_a_live_grant(world: World) -> None:
    rid = world.grant()
    with pytest.raises(Forbidden):
        sessions.issue_session_token(world.node, world.bob, rid)
    with pytest.raises(Forbidden):
        sessions.issue_session_token(world.node, world.admin, rid)
    g = grant_id_of(world.node, requests.get_request(world.node, world.alice, rid))
    grants.revoke_grant(world.node, world.admin, g, "done")
    with pytest.raises(Conflict):
        sessions.issue_session_token(world.node, world.alice, rid)


def _race(n: int, fn: Any) -> list[BaseException | Any]:
    barrier = threading.Barrier(n)
    out: list[BaseException | Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            out[i] = fn(i)
        except BaseException as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
        assert not th.is_alive(), "a racer hung"
    return out


def test_a_single_use_token_opens_exactly_one_session_when_twenty_clients_race(
    world: World,
) -> None:
    for trial in range(5):
        rid = world.grant()
        once = world.token(rid, once=True)
        results = _race(
            20, lambda _i, once=once: sessions.open_session(world.node, once, "postgres")
        )
        wins = [r for r in results if isinstance(r, sessions.SessionTicket)]
        losses = [r for r in results if isinstance(r, AuthError)]
        assert len(wins) == 1, f"trial {trial}: {len(wins)} sessions from one single-use token"
        assert len(losses) == 19, f"trial {trial}: unexpected outcomes {results}"


TRIALS = 200


def test_revoke_racing_session_open_has_one_outcome(world: World) -> None:
    outcomes: Counter[str] = Counter()
    jitter = random.Random(20261122)
    for trial in range(TRIALS):
        rid = world.grant()
        token = world.token(rid)
        gid = grant_id_of(world.node, requests.get_request(world.node, world.alice, rid))

        def act(i: int, token: Sensitive[str] = token, gid: int = gid) -> Any:
            time.sleep(jitter.random() * 0.004)  # let either side win some trials
            if i == 0:
                return grants.revoke_grant(world.node, world.admin, gid, "race")
            return sessions.open_session(world.node, token, "postgres")

        revoked, opened = _race(2, act)
        assert not isinstance(revoked, BaseException), f"trial {trial}: revoke failed: {revoked}"
        assert revoked.state.value == "revoked"
        # the only acceptable results of the open: refused, or opened and then cut by revoke
        if isinstance(opened, sessions.SessionTicket):
            outcomes["opened, then cut"] += 1
        elif isinstance(opened, AuthError):
            outcomes["refused"] += 1
        else:
            raise AssertionError(f"trial {trial}: open gave {opened!r}")
        assert world.live(gid) == 0, f"trial {trial}: a live session outlived its revoked grant"
    assert sum(outcomes.values()) == TRIALS
    print(f"revoke vs open over {TRIALS} trials: {dict(outcomes)}")


def _ends_audited(world: World) -> dict[int, list[tuple[str, str]]]:
    """Every ``session.ended`` event: session id -> [(actor, reason)], in the chain's order."""
    with world.node.read() as conn:
        rows = conn.execute(
            select(t.audit_events.c.actor, t.audit_events.c.subject, t.audit_events.c.details)
            .where(t.audit_events.c.action == "session.ended")
            .order_by(t.audit_events.c.seq)
        ).all()
    ends: dict[int, list[tuple[str, str]]] = {}
    for actor, subject, details in rows:
        reason = (details if isinstance(details, dict) else json.loads(details))["reason"]
        ends.setdefault(int(subject.removeprefix("session:")), []).append((actor, reason))
    return ends


def test_every_end_of_a_session_is_audited_once_whatever_ended_it(world: World) -> None:
    # its client, its grant's revoke (two sessions at once), its grant's expiry
    closed = sessions.open_session(world.node, world.token(world.grant()), "postgres")
    assert sessions.close_session(world.node, closed.session_id, "client closed")
    rid = world.grant()
    cut = [sessions.open_session(world.node, world.token(rid), "postgres") for _ in range(2)]
    grants.revoke_grant(world.node, world.admin, cut[0].grant.id, "INC-9 over")
    expiring = sessions.open_session(world.node, world.token(world.grant()), "postgres")
    later = world.node.clock() + timedelta(hours=1)
    world.node.clock = lambda: later
    grants.sweep(world.node)
    # the proxies then close what the store already ended: no second end
    for ticket in (*cut, expiring):
        assert not sessions.close_session(world.node, ticket.session_id, "client closed")

    revoked = ("admin", "grant revoked: INC-9 over")
    assert _ends_audited(world) == {
        closed.session_id: [("system", "client closed")],
        cut[0].session_id: [revoked],
        cut[1].session_id: [revoked],
        expiring.session_id: [("system", "grant ended: expired")],
    }
    with world.node.read() as conn:
        (details,) = conn.execute(
            select(t.audit_events.c.details).where(t.audit_events.c.action == "grant.revoked")
        ).one()
    details = details if isinstance(details, dict) else json.loads(details)
    assert details["sessions_cut"] == [c.session_id for c in cut]


def test_a_revoke_racing_a_client_closing_its_session_audits_one_end(world: World) -> None:
    outcomes: Counter[str] = Counter()
    jitter = random.Random(20261204)
    for trial in range(40):
        rid = world.grant()
        ticket = sessions.open_session(world.node, world.token(rid), "postgres")

        def act(i: int, ticket: sessions.SessionTicket = ticket) -> Any:
            time.sleep(jitter.random() * 0.004)  # let either side win some trials
            if i == 0:
                return grants.revoke_grant(world.node, world.admin, ticket.grant.id, "race")
            return sessions.close_session(world.node, ticket.session_id, "client closed")

        revoked, closed_it = _race(2, act)
        assert not isinstance(revoked, BaseException), f"trial {trial}: {revoked!r}"
        assert isinstance(closed_it, bool), f"trial {trial}: {closed_it!r}"
        ends = _ends_audited(world)[ticket.session_id]
        assert len(ends) == 1, f"trial {trial}: the session's end was audited {ends}"
        outcomes["closed first" if closed_it else "cut first"] += 1
        assert (ends[0][1] == "client closed") == closed_it, f"trial {trial}: {ends}"
    print(f"revoke vs close over 40 trials: {dict(outcomes)}")


def test_a_scram_exchange_with_the_token_as_password_proves_it_without_sending_it(
    world: World,
) -> None:
    from jitvault.plugin_api.scram import ScramAuthFailed, ScramClient, ScramServer

    rid = world.grant()
    token = world.token(rid)
    token_id = token.reveal().split("_")[1]
    verifier = sessions.token_verifier(world.node, token_id)
    assert verifier is not None
    assert token.reveal() not in verifier.reveal()

    def exchange(password: Sensitive[str]) -> None:
        client, server = ScramClient(password), ScramServer(verifier)
        final = server.handle_client_final(
            client.handle_server_first(server.handle_client_first(client.first_message()))
        )
        client.verify_server_final(final)

    exchange(token)  # the right token proves itself
    ticket = sessions.open_session_verified(world.node, token_id, "postgres", "127.0.0.1")
    assert ticket.grant.request_id == rid
    with pytest.raises(ScramAuthFailed):
        exchange(Sensitive(token.reveal()[:-1] + "x"))
    assert sessions.token_verifier(world.node, "0" * 16) is None


def test_connect_info_names_the_token_in_the_user_and_its_password_opens_a_session(
    world: World,
) -> None:
    rid = world.grant()
    info = sessions.connect_info(world.node, world.alice, rid, once=True)
    account, token_id = info["user"].rsplit(".", 1)
    assert account == "app"
    assert info["password"].startswith(f"jvs_{token_id}_")
    assert info["port"] == world.node.settings.server.pg_proxy_port
    assert info["uri"].startswith("postgresql://app.")
    assert "sslmode=require" in info["uri"]
    ticket = sessions.open_session(world.node, Sensitive(info["password"]), "postgres")
    assert ticket.grant.request_id == rid
    with pytest.raises(AuthError):  # --once
        sessions.open_session(world.node, Sensitive(info["password"]), "postgres")


def test_a_session_recording_is_encrypted_at_rest_and_shown_to_its_user_and_auditors(
    world: World,
) -> None:
    rid = world.grant()
    ticket = sessions.open_session(world.node, world.token(rid), "postgres")
    sessions.record_event(world.node, ticket.session_id, "query", {"text": "SELECT 42"})
    with world.node.read() as conn:
        raw = conn.execute(select(t.session_events.c.data)).scalars().all()
    assert raw
    assert all(r.startswith("jv1:") and "SELECT 42" not in r for r in raw)
    shown = sessions.show_session(world.node, world.alice, ticket.session_id)
    assert [e["data"]["text"] for e in shown["events"]] == ["SELECT 42"]
    auditor = world.principal("audrey", Role.AUDITOR)
    assert sessions.show_session(world.node, auditor, ticket.session_id)["user"] == "alice"
    with pytest.raises(Forbidden):
        sessions.show_session(world.node, world.bob, ticket.session_id)
    assert [s["id"] for s in sessions.list_sessions(world.node, world.bob)] == []

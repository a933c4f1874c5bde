"""Users' SSH keys in the core: registering, listing and removing them (who may, validation,
audit, fail closed), and the sessions a registered key opens (the rules the SSH proxy's key
login relies on: owner, account, live grant, disabled users, removed keys, max_connections
under races, revoke racing the open). On SQLite and PostgreSQL (``--db``)."""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from jitvault.crypto import ssh_fingerprint
from jitvault.domain import AccessKind, AccountMode, Principal, Role, Sensitive
from jitvault.errors import AuditUnavailable, AuthError, Conflict, Forbidden, NotFound
from jitvault.services import Node, grants, policies, requests, sessions, ssh_keys, targets, users
from jitvault.services.requests import NewRequest
from jitvault.storage import tables as t
from tests.conftest import Booted, grant_id_of
from tests.support import inserts_refused

POLICY = """
rules:
  - name: auto
    match: {targets: [db1]}
    auto_approve: true
    max_duration: 1h
    max_connections: 2
"""


def new_key(comment: str = "laptop") -> tuple[str, bytes]:
    """A fresh Ed25519 public key line (with ``comment``) and its wire-format blob."""
    line = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
        .decode()
    )
    return f"{line} {comment}", base64.b64decode(line.split()[1])


class World:
    def __init__(self, booted: Booted) -> None:
        self.node: Node = booted.node
        self.admin = booted.admin
        targets.add_target(self.node, self.admin, "db1", "postgres", {"host": "127.0.0.1"})
        policies.apply_policy(self.node, self.admin, POLICY)
        self.alice = self.principal("alice", Role.REQUESTER)
        self.bob = self.principal("bob", Role.REQUESTER)
        self._accounts = 0

    def principal(self, name: str, role: Role) -> Principal:
        u = users.add_user(self.node, self.admin, name, role)
        return Principal(u.id, u.name, u.role, u.groups)

    def grant(self, who: Principal | None = None) -> tuple[int, str]:
        """A live grant of a fresh shared account: (grant id, account)."""
        self._accounts += 1
        account = f"app{self._accounts}"
        targets.add_account(
            self.node, self.admin, "db1", account, AccountMode.INJECTED, Sensitive("pw-123456")
        )
        r = requests.create_request(
            self.node,
            who or self.alice,
            NewRequest("db1", AccessKind.ACCOUNT, account, timedelta(minutes=30), "INC-1"),
        )
        assert r.state.value == "active"
        gid = grant_id_of(self.node, r)
        return gid, account

    def register(self, who: Principal, line: str | None = None) -> bytes:
        line, blob = (line, base64.b64decode(line.split()[1])) if line else new_key()
        ssh_keys.register_key(self.node, who, who.name, Sensitive(line))
        return blob

    def audited(self, action: str) -> list[Any]:
        with self.node.read() as conn:
            rows = conn.execute(
                select(t.audit_events.c.subject, t.audit_events.c.details)
                .where(t.audit_events.c.action == action)
                .order_by(t.audit_events.c.seq)
            ).all()
        return [(r.subject, r.details) for r in rows]

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


def _details(raw: Any) -> dict[str, Any]:
    return raw if isinstance(raw, dict) else json.loads(raw)


# ------------------------------------------------------------------------ register, list, remove


def test_a_user_registers_lists_and_removes_their_own_keys_and_each_change_is_audited(
    world: World,
) -> None:
    line, _ = new_key("alice@laptop")
    added = ssh_keys.register_key(
        world.node, world.alice, "alice", Sensitive(line), None, "10.1.2.3"
    )
    assert added.user == "alice"
    assert added.algorithm == "ssh-ed25519"
    assert added.fingerprint.startswith("SHA256:")
    assert added.public_key == " ".join(line.split()[:2])
    assert added.comment == "alice@laptop"
    other, _ = new_key()
    named = ssh_keys.register_key(world.node, world.alice, "ALICE", Sensitive(other), "work")
    assert named.comment == "work"
    listed = ssh_keys.list_keys(world.node, world.alice, "alice")
    assert [k.fingerprint for k in listed] == [added.fingerprint, named.fingerprint]
    # the fingerprint is accepted as ssh-keygen prints it, with or without its prefix
    ssh_keys.remove_key(
        world.node, world.alice, "alice", added.fingerprint.removeprefix("SHA256:"), "10.1.2.3"
    )
    assert [k.fingerprint for k in ssh_keys.list_keys(world.node, world.alice, "alice")] == [
        named.fingerprint
    ]
    with pytest.raises(NotFound):
        ssh_keys.remove_key(world.node, world.alice, "alice", added.fingerprint)
    added_events = world.audited("ssh_key.added")
    assert [(s, _details(d)["fingerprint"]) for s, d in added_events] == [
        ("user:alice", added.fingerprint),
        ("user:alice", named.fingerprint),
    ]
    assert _details(added_events[0][1])["comment"] == "alice@laptop"
    removed = world.audited("ssh_key.removed")
    assert [(s, _details(d)["fingerprint"]) for s, d in removed] == [
        ("user:alice", added.fingerprint)
    ]
    with world.node.read() as conn:
        sources = conn.execute(
            select(t.audit_events.c.source).where(t.audit_events.c.action.like("ssh_key.%"))
        ).scalars()
        assert "10.1.2.3" in list(sources)


def test_admins_manage_anyones_keys_auditors_read_them_and_others_touch_only_their_own(
    world: World,
) -> None:
    auditor = world.principal("audrey", Role.AUDITOR)
    line, _ = new_key()
    with pytest.raises(Forbidden):
        ssh_keys.register_key(world.node, world.bob, "alice", Sensitive(line))
    with pytest.raises(Forbidden):
        ssh_keys.register_key(world.node, auditor, "alice", Sensitive(line))
    added = ssh_keys.register_key(world.node, world.admin, "alice", Sensitive(line))
    assert added.user == "alice"
    assert [k.fingerprint for k in ssh_keys.list_keys(world.node, auditor, "alice")] == [
        added.fingerprint
    ]
    with pytest.raises(Forbidden):
        ssh_keys.list_keys(world.node, world.bob, "alice")
    with pytest.raises(Forbidden):
        ssh_keys.remove_key(world.node, world.bob, "alice", added.fingerprint)
    # bob cannot reach alice's key through his own name either
    with pytest.raises(NotFound):
        ssh_keys.remove_key(world.node, world.bob, "bob", added.fingerprint)
    ssh_keys.remove_key(world.node, world.admin, "alice", added.fingerprint)
    assert ssh_keys.list_keys(world.node, world.alice, "alice") == []


def test_one_key_belongs_to_one_person(world: World) -> None:
    line, _ = new_key()
    ssh_keys.register_key(world.node, world.alice, "alice", Sensitive(line))
    for who in (world.alice, world.bob):
        with pytest.raises(Conflict, match="registered already"):
            ssh_keys.register_key(world.node, who, who.name, Sensitive(line.replace("laptop", "x")))
    assert ssh_keys.list_keys(world.node, world.bob, "bob") == []
    assert len(world.audited("ssh_key.added")) == 1


def test_a_key_cannot_be_registered_or_removed_when_the_audit_log_cannot_be_written(
    world: World,
) -> None:
    kept, _ = new_key()
    fingerprint = ssh_keys.register_key(world.node, world.alice, "alice", Sensitive(kept))
    line, _ = new_key()
    with inserts_refused(world.node, "audit_events"):
        with pytest.raises(AuditUnavailable):
            ssh_keys.register_key(world.node, world.alice, "alice", Sensitive(line))
        with pytest.raises(AuditUnavailable):
            ssh_keys.remove_key(world.node, world.alice, "alice", fingerprint.fingerprint)
    assert [k.fingerprint for k in ssh_keys.list_keys(world.node, world.alice, "alice")] == [
        fingerprint.fingerprint
    ]


def _as(api: TestClient, token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_api_refuses_private_malformed_and_duplicate_keys_and_never_echoes_the_input(
    booted: Booted, api: TestClient
) -> None:
    user = api.post("/v1/users", json={"name": "carol", "role": "requester"})
    assert user.status_code == 201, user.text
    token = api.post("/v1/users/carol/tokens", json={}).json()["token"]
    carol = _as(api, token)
    private = (
        Ed25519PrivateKey.generate()
        .private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())
        .decode()
    )
    short_rsa = (
        generate_private_key(65537, 1024)  # noqa: S505 (refused: that is the test)
        .public_key()
        .public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
        .decode()
    )
    line, _ = new_key()
    cases = {
        private: "private key",
        "ssh-ed25519 bm90IGEga2V5": "not a valid key",
        short_rsa: "2048",
        f'from="10.0.0.1" {line}': "options",
    }
    for text, why in cases.items():
        resp = api.post("/v1/users/carol/ssh-keys", json={"public_key": text}, headers=carol)
        assert resp.status_code == 422, resp.text
        assert why in resp.text
        for chunk in text.split():
            if len(chunk) >= 12:
                assert chunk not in resp.text
    ok = api.post("/v1/users/carol/ssh-keys", json={"public_key": line}, headers=carol)
    assert ok.status_code == 201, ok.text
    fp = ok.json()["fingerprint"]
    dup = api.post("/v1/users/carol/ssh-keys", json={"public_key": line})  # as the admin
    assert dup.status_code == 409, dup.text
    assert api.post("/v1/users/admin/ssh-keys", json={"public_key": line}).status_code == 409
    listed = api.get("/v1/users/carol/ssh-keys", headers=carol).json()
    assert [k["fingerprint"] for k in listed] == [fp]
    with booted.node.read() as conn:
        added = conn.execute(
            select(t.audit_events.c.subject).where(t.audit_events.c.action == "ssh_key.added")
        ).scalars()
        assert list(added) == ["user:carol"], "only the accepted key was audited"
    # a fingerprint holds "/" and "+": it travels percent-encoded
    gone = api.delete(f"/v1/users/carol/ssh-keys/{quote(fp, safe='')}", headers=carol)
    assert gone.status_code == 204, gone.text
    assert api.get("/v1/users/carol/ssh-keys", headers=carol).json() == []
    bad = api.delete("/v1/users/carol/ssh-keys/not-a-fingerprint", headers=carol)
    assert bad.status_code == 422, bad.text


# ------------------------------------------------------------------------ sessions opened by a key


def test_a_registered_key_opens_a_session_of_its_owners_live_grant_recorded_with_it(
    world: World,
) -> None:
    blob = world.register(world.alice)
    gid, account = world.grant()
    sessions.check_session_key(world.node, account, gid, blob, "ssh", "127.0.0.1")
    assert world.live(gid) == 0, "checking a key opens nothing"
    ticket = sessions.open_session_with_key(world.node, account, gid, blob, "ssh", "127.0.0.1")
    assert ticket.grant.id == gid
    assert world.live(gid) == 1
    fingerprint = ssh_keys.list_keys(world.node, world.alice, "alice")[0].fingerprint
    with world.node.read() as conn:
        row = conn.execute(select(t.sessions).where(t.sessions.c.id == ticket.session_id)).one()
    assert (row.token_id, row.ssh_key_fingerprint) == ("", fingerprint)
    opened = [_details(d) for s, d in world.audited("session.opened")]
    assert opened[-1]["ssh_key"] == fingerprint
    assert opened[-1]["grant_id"] == gid
    assert "token_id" not in opened[-1]


def test_every_key_refusal_says_the_same_to_the_client_and_the_reason_to_the_audit_log(
    world: World,
) -> None:
    alice_key = world.register(world.alice)
    bob_key = world.register(world.bob)
    _, unregistered = new_key()
    gid, account = world.grant()
    bobs_gid, bobs_account = world.grant(world.bob)
    revoked_gid, revoked_account = world.grant()
    grants.revoke_grant(world.node, world.admin, revoked_gid, "done")
    removed = world.register(world.alice)
    removed_fp = ssh_keys.list_keys(world.node, world.alice, "alice")[-1].fingerprint
    ssh_keys.remove_key(world.node, world.alice, "alice", removed_fp)
    carol = world.principal("carol", Role.REQUESTER)
    carol_key = world.register(carol)
    carols_gid, carols_account = world.grant(carol)
    with world.node.db.begin() as conn:
        conn.execute(update(t.users).where(t.users.c.name == "carol").values(disabled=True))
    refused = {
        "unregistered ssh key": (account, gid, unregistered),
        "ssh key of another user": (account, gid, bob_key),
        "another user's grant": (bobs_account, bobs_gid, alice_key),
        "account does not match": (bobs_account, gid, alice_key),
        "no such grant": (account, gid + 1000, alice_key),
        "grant is revoked": (revoked_account, revoked_gid, alice_key),
        "removed key": (account, gid, removed),
        "owner is disabled": (carols_account, carols_gid, carol_key),
    }
    messages = set()
    for account_, grant_id, blob in refused.values():
        for attempt in (sessions.check_session_key, sessions.open_session_with_key):
            with pytest.raises(AuthError) as err:
                attempt(world.node, account_, grant_id, blob, "ssh", "127.0.0.1")
            messages.add((err.value.message, err.value.hint))
    assert messages == {("authentication failed", None)}
    reasons = [_details(d)["reason"] for s, d in world.audited("session.refused")]
    assert len(reasons) == 2 * len(refused), "every refusal is audited"
    text = " ".join(reasons)
    for why in ("unregistered", "another user", "account does not match", "no such grant"):
        assert why in text
    assert "grant is revoked" in text
    assert "disabled" in text
    subjects = {s for s, d in world.audited("session.refused")}
    assert all(s.startswith("ssh_key:SHA256:") for s in subjects)
    assert world.live(gid) == world.live(bobs_gid) == world.live(carols_gid) == 0
    # the owner's key on the right grant and account still gets in
    sessions.open_session_with_key(world.node, account, gid, alice_key, "ssh")


def test_a_key_stops_opening_sessions_when_its_grant_expires(world: World) -> None:
    blob = world.register(world.alice)
    gid, account = world.grant()
    sessions.open_session_with_key(world.node, account, gid, blob, "ssh")
    later = world.node.clock() + timedelta(hours=1)
    world.node.clock = lambda: later
    for attempt in (sessions.check_session_key, sessions.open_session_with_key):
        with pytest.raises(AuthError):
            attempt(world.node, account, gid, blob, "ssh")
    reasons = [_details(d)["reason"] for s, d in world.audited("session.refused")]
    assert reasons == ["grant has expired"] * 2


def _race(n: int, fn: Any) -> list[Any]:
    barrier = threading.Barrier(n)
    out: list[Any] = [None] * n

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


def test_max_connections_holds_for_key_sessions_when_twenty_clients_race(world: World) -> None:
    blob = world.register(world.alice)
    for trial in range(3):
        gid, account = world.grant()
        results = _race(
            20,
            lambda _i, gid=gid, account=account: sessions.open_session_with_key(
                world.node, account, gid, blob, "ssh"
            ),
        )
        wins = [r for r in results if isinstance(r, sessions.SessionTicket)]
        full = [r for r in results if isinstance(r, sessions.TooManySessions)]
        assert len(wins) == 2, f"trial {trial}: {len(wins)} sessions on a grant of 2"
        assert len(full) == 18, f"trial {trial}: unexpected outcomes {results}"
        assert world.live(gid) == 2
        # a full grant is not told before the key is proven (the check only reads)
        sessions.check_session_key(world.node, account, gid, blob, "ssh")
        sessions.close_session(world.node, wins[0].session_id)
        sessions.open_session_with_key(world.node, account, gid, blob, "ssh")


def test_key_sessions_leave_single_use_tokens_single_use(world: World) -> None:
    blob = world.register(world.alice)
    gid, account = world.grant()
    with world.node.read() as conn:
        rid = conn.execute(select(t.grants.c.request_id).where(t.grants.c.id == gid)).scalar_one()
    once, _ = sessions.issue_session_token(world.node, world.alice, rid, once=True)
    first = sessions.open_session_with_key(world.node, account, gid, blob, "ssh")
    sessions.close_session(world.node, first.session_id)
    sessions.open_session(world.node, once, "ssh")
    with pytest.raises(AuthError):
        sessions.open_session(world.node, once, "ssh")


def _one_outcome(trial: int, ending: Any, opened: Any) -> str:
    """What a race of an end (revoke, key removal) with a key session's open gave: the end
    always succeeds; the open either came first (and its session is cut) or is refused."""
    assert not isinstance(ending, BaseException), f"trial {trial}: {ending!r}"
    if isinstance(opened, sessions.SessionTicket):
        return "opened, then cut"
    if isinstance(opened, AuthError):
        return "refused"
    raise AssertionError(f"trial {trial}: open gave {opened!r}")


def test_revoke_racing_a_key_session_open_has_one_outcome(world: World) -> None:
    blob = world.register(world.alice)
    outcomes: Counter[str] = Counter()
    jitter = random.Random(20261129)
    for trial in range(40):
        gid, account = world.grant()

        def act(i: int, gid: int = gid, account: str = account) -> Any:
            time.sleep(jitter.random() * 0.004)
            if i == 0:
                return grants.revoke_grant(world.node, world.admin, gid, "race")
            return sessions.open_session_with_key(world.node, account, gid, blob, "ssh")

        outcomes[_one_outcome(trial, *_race(2, act))] += 1
        assert world.live(gid) == 0, f"trial {trial}: a live session outlived its revoked grant"
    print(f"revoke vs key open: {dict(outcomes)}")


def test_removing_a_key_ends_its_live_sessions_and_only_those(world: World) -> None:
    blob = world.register(world.alice)
    other = world.register(world.alice)
    gid, account = world.grant()
    by_key = sessions.open_session_with_key(world.node, account, gid, blob, "ssh")
    by_other = sessions.open_session_with_key(world.node, account, gid, other, "ssh")
    fingerprint = ssh_fingerprint(blob)
    ssh_keys.remove_key(world.node, world.alice, "alice", fingerprint)
    ended = sessions.ended_among(world.node, [by_key.session_id, by_other.session_id])
    assert ended == {by_key.session_id: ssh_keys.KEY_REMOVED_REASON}
    (_, details), *_ = reversed(world.audited("ssh_key.removed"))
    assert _details(details)["sessions_cut"] == [by_key.session_id]
    # the cut session's own end is audited in the same transaction, as the remover's act
    ends = [(s, _details(d)) for s, d in world.audited("session.ended")]
    assert ends == [(f"session:{by_key.session_id}", {"reason": ssh_keys.KEY_REMOVED_REASON})]


def test_a_key_removal_racing_a_key_session_open_leaves_no_live_session_of_the_key(
    world: World,
) -> None:
    outcomes: Counter[str] = Counter()
    jitter = random.Random(20261130)
    gid, account = world.grant()
    for trial in range(40):
        blob = world.register(world.alice)
        fingerprint = ssh_fingerprint(blob)

        def act(i: int, blob: bytes = blob, fingerprint: str = fingerprint) -> Any:
            time.sleep(jitter.random() * 0.004)
            if i == 0:
                return ssh_keys.remove_key(world.node, world.alice, "alice", fingerprint)
            return sessions.open_session_with_key(world.node, account, gid, blob, "ssh")

        outcomes[_one_outcome(trial, *_race(2, act))] += 1
        with world.node.read() as conn:
            live = conn.execute(
                select(t.sessions.c.id).where(
                    t.sessions.c.ssh_key_fingerprint == fingerprint,
                    t.sessions.c.ended_at.is_(None),
                )
            ).all()
        assert not live, f"trial {trial}: a session outlived the removal of its key"
    print(f"key removal vs key open: {dict(outcomes)}")

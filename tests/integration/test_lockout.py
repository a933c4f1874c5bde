"""Lockout: ten failed authentications lock a source or a user for the lockout window.

Counters live in the database (``auth_failures``); the window's passing is simulated by moving
that row's times into the past, never by sleeping. Sources are varied through a trusted proxy's
X-Forwarded-For (the TestClient's peer is ``testclient``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from jitvault.services import Node
from jitvault.services.auth import user_counter_key
from jitvault.storage import tables as t
from tests.conftest import Booted

MAX = 10  # the default: the product promises ten
PEER = "testclient"
PASSWORD = "correct horse battery"
WRONG_SECRET = "W" * 43


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def via(source: str) -> dict[str, str]:
    return {"X-Forwarded-For": source}


def wide(text: str) -> str:
    """The full-width form (U+FF01..U+FF5E) of ASCII letters: NFKC folds it back."""
    return "".join(chr(ord(ch) + 0xFEE0) for ch in text)


def token_id(token: str) -> str:
    return token.split("_")[1]


@pytest.fixture
def client(booted: Booted, api: TestClient) -> TestClient:
    """An anonymous client (each call says who it is)."""
    assert booted.node.settings.auth.max_failures == MAX
    api.headers.pop("Authorization", None)
    return api


@pytest.fixture
def proxied(booted: Booted, client: TestClient) -> TestClient:
    """The TestClient's peer is a trusted proxy: X-Forwarded-For names the source."""
    booted.node.settings.auth.trusted_proxies = [PEER]
    return client


def add_user(booted: Booted, client: TestClient, name: str, password: str | None = None) -> str:
    """Create a requester (with a password if given) and return an API token of theirs."""
    body: dict[str, Any] = {"name": name, "role": "requester"}
    if password is not None:
        body["password"] = password
    admin = bearer(booted.admin_token)
    assert client.post("/v1/users", json=body, headers=admin).status_code == 201
    resp = client.post(f"/v1/users/{name}/tokens", json={}, headers=admin)
    assert resp.status_code == 201
    token: str = resp.json()["token"]
    return token


def whoami(client: TestClient, token: str, source: str | None = None) -> int:
    headers = bearer(token) | (via(source) if source else {})
    status: int = client.get("/v1/auth/whoami", headers=headers).status_code
    return status


def login(client: TestClient, username: str, password: str, source: str | None = None) -> Any:
    return client.post(
        "/v1/auth/login",
        json={"username": username, "password": password},
        headers=via(source) if source else {},
    )


def failure_row(node: Node, key: str) -> Any:
    with node.read() as conn:
        return conn.execute(select(t.auth_failures).where(t.auth_failures.c.key == key)).first()


def let_window_pass(node: Node, key: str) -> None:
    """Move a counter's first failure and lock end into the past by one lockout window."""
    row = failure_row(node, key)
    assert row is not None
    assert row.locked_until is not None
    shift = timedelta(seconds=node.settings.auth.lockout_seconds + 1)
    with node.db.begin() as conn:
        conn.execute(
            update(t.auth_failures)
            .where(t.auth_failures.c.key == key)
            .values(first_at=row.first_at - shift, locked_until=row.locked_until - shift)
        )


def audit_rows(node: Node, action: str) -> list[Any]:
    with node.read() as conn:
        return list(
            conn.execute(
                select(t.audit_events)
                .where(t.audit_events.c.action == action)
                .order_by(t.audit_events.c.seq)
            )
        )


# --- per source --------------------------------------------------------------------------------


def test_ten_bad_tokens_from_one_source_lock_it_even_against_a_valid_token(
    booted: Booted, client: TestClient
) -> None:
    for _ in range(MAX - 1):
        assert whoami(client, "garbage") == 401
    # nine failures: not locked yet
    assert whoami(client, booted.admin_token) == 200
    assert whoami(client, "garbage") == 401  # the tenth failure is refused as usual ...
    # ... and from now on this source is locked, whatever it presents
    locked = client.get("/v1/auth/whoami", headers=bearer(booted.admin_token))
    assert locked.status_code == 429
    assert locked.json()["error"]["code"] == "locked_out"
    assert whoami(client, "garbage") == 429
    assert client.get("/v1/users", headers=bearer(booted.admin_token)).status_code == 429
    row = failure_row(booted.node, f"src:{PEER}")
    assert row.count == MAX
    assert row.locked_until is not None


def test_a_locked_source_cannot_log_in_with_a_right_password(
    booted: Booted, client: TestClient
) -> None:
    add_user(booted, client, "alice", PASSWORD)
    for _ in range(MAX):
        assert whoami(client, "garbage") == 401
    resp = login(client, "alice", PASSWORD)
    assert resp.status_code == 429
    assert "token" not in resp.json()


def test_a_source_lock_ends_when_the_window_has_passed(booted: Booted, client: TestClient) -> None:
    for _ in range(MAX):
        whoami(client, "garbage")
    assert whoami(client, booted.admin_token) == 429
    let_window_pass(booted.node, f"src:{PEER}")
    assert whoami(client, booted.admin_token) == 200
    # the count started over: one more failure does not lock again
    assert whoami(client, "garbage") == 401
    assert whoami(client, booted.admin_token) == 200
    assert failure_row(booted.node, f"src:{PEER}").count == 1


def test_a_lock_that_has_not_ended_still_holds(booted: Booted, client: TestClient) -> None:
    """The counterpart of the test above: only moving the times makes the lock end."""
    for _ in range(MAX):
        whoami(client, "garbage")
    key = f"src:{PEER}"
    row = failure_row(booted.node, key)
    with booted.node.db.begin() as conn:
        conn.execute(
            update(t.auth_failures)
            .where(t.auth_failures.c.key == key)
            .values(locked_until=row.locked_until - timedelta(seconds=60))
        )
    assert whoami(client, booted.admin_token) == 429


def test_one_locked_source_does_not_lock_another(booted: Booted, proxied: TestClient) -> None:
    for _ in range(MAX):
        assert whoami(proxied, "garbage", source="127.0.0.7") == 401
    assert whoami(proxied, booted.admin_token, source="127.0.0.7") == 429
    assert whoami(proxied, booted.admin_token, source="127.0.0.8") == 200


def test_x_forwarded_for_from_an_untrusted_peer_does_not_change_the_source(
    booted: Booted, client: TestClient
) -> None:
    assert booted.node.settings.auth.trusted_proxies == []
    for i in range(MAX):
        assert whoami(client, "garbage", source=f"127.0.0.{i + 1}") == 401
    # all ten counted against the real peer: locked under any claimed address
    assert whoami(client, booted.admin_token, source="127.0.0.99") == 429
    assert failure_row(booted.node, f"src:{PEER}").count == MAX


def test_bad_credentials_count_on_every_authenticated_route_and_login(
    booted: Booted, client: TestClient
) -> None:
    """Failures on different routes and on password login add up for one source."""
    for i in range(MAX):
        if i % 3 == 0:
            assert login(client, "nobody", "wrong-password").status_code == 401
        elif i % 3 == 1:
            assert client.get("/v1/targets", headers=bearer("garbage")).status_code == 401
        else:
            assert client.post("/v1/audit/verify").status_code == 401
    assert whoami(client, booted.admin_token) == 429


# --- per user ----------------------------------------------------------------------------------


def test_ten_wrong_secrets_for_one_user_from_different_sources_lock_that_user(
    booted: Booted, proxied: TestClient
) -> None:
    alice = add_user(booted, proxied, "alice", PASSWORD)
    bob = add_user(booted, proxied, "bob")
    forged = f"jvt_{token_id(alice)}_{WRONG_SECRET}"
    for i in range(MAX):
        assert whoami(proxied, forged, source=f"127.0.0.{i + 1}") == 401
    # alice is locked from everywhere, even with her valid token and her password ...
    assert whoami(proxied, alice, source="127.0.0.200") == 429
    assert login(proxied, "alice", PASSWORD, source="127.0.0.201").status_code == 429
    # ... while each source saw one failure only: bob is fine from the same sources
    for i in range(MAX):
        assert whoami(proxied, bob, source=f"127.0.0.{i + 1}") == 200
    assert failure_row(booted.node, user_counter_key("alice")).count == MAX


def test_a_user_lock_ends_when_the_window_has_passed(booted: Booted, proxied: TestClient) -> None:
    alice = add_user(booted, proxied, "alice", PASSWORD)
    forged = f"jvt_{token_id(alice)}_{WRONG_SECRET}"
    for i in range(MAX):
        whoami(proxied, forged, source=f"127.0.0.{i + 1}")
    assert whoami(proxied, alice, source="127.0.0.50") == 429
    let_window_pass(booted.node, user_counter_key("alice"))
    assert whoami(proxied, alice, source="127.0.0.50") == 200
    assert login(proxied, "alice", PASSWORD, source="127.0.0.51").status_code == 200


def test_login_compares_user_names_after_nfkc_case_folding(
    booted: Booted, proxied: TestClient
) -> None:
    add_user(booted, proxied, "alice", PASSWORD)
    for i, spelling in enumerate(("alice", "ALICE", "Alice", wide("alice"), wide("ALICE"))):
        resp = login(proxied, spelling, PASSWORD, source=f"127.0.0.{i + 1}")
        assert resp.status_code == 200, (spelling, resp.text)
        assert resp.json()["user"] == "alice"
        token = resp.json()["token"]
        me = proxied.get("/v1/auth/whoami", headers=bearer(token))
        assert me.json()["name"] == "alice"


def test_failures_under_every_spelling_of_a_name_count_against_one_user(
    booted: Booted, proxied: TestClient
) -> None:
    add_user(booted, proxied, "alice", PASSWORD)
    spellings = ("ALICE", "Alice", wide("alice"), "alice", "aLiCe")
    for i in range(MAX):
        resp = login(proxied, spellings[i % len(spellings)], "wrong-password", f"127.0.0.{i + 1}")
        assert resp.status_code == 401
    assert failure_row(booted.node, user_counter_key("alice")).count == MAX
    # a locked user cannot log in with the right password, under any spelling, from anywhere
    for spelling in ("alice", wide("alice")):
        resp = login(proxied, spelling, PASSWORD, source="127.0.0.99")
        assert resp.status_code == 429
        assert "token" not in resp.json()


def test_a_locked_user_cannot_log_in_with_the_right_password(
    booted: Booted, proxied: TestClient
) -> None:
    alice = add_user(booted, proxied, "alice", PASSWORD)
    for i in range(MAX):
        assert login(proxied, "alice", "wrong-password", f"127.0.0.{i + 1}").status_code == 401
    resp = login(proxied, "alice", PASSWORD, source="127.0.0.99")
    assert resp.status_code == 429
    assert "token" not in resp.json()
    # the lock covers her API tokens too
    assert whoami(proxied, alice, source="127.0.0.98") == 429


def test_a_successful_login_resets_the_users_failure_count(
    booted: Booted, proxied: TestClient
) -> None:
    add_user(booted, proxied, "alice", PASSWORD)
    for i in range(MAX - 1):
        assert login(proxied, "alice", "wrong-password", f"127.0.0.{i + 1}").status_code == 401
    assert login(proxied, "alice", PASSWORD, source="127.0.0.50").status_code == 200
    assert failure_row(booted.node, user_counter_key("alice")) is None
    # so one more failure does not lock her
    assert login(proxied, "alice", "wrong-password", "127.0.0.51").status_code == 401
    assert login(proxied, "alice", PASSWORD, source="127.0.0.52").status_code == 200


def test_unknown_user_names_are_counted_and_locked_like_real_ones(
    booted: Booted, proxied: TestClient
) -> None:
    """So a lock (429) does not tell an attacker that a name exists."""
    for i in range(MAX):
        assert login(proxied, "ghost", "wrong-password", f"127.0.0.{i + 1}").status_code == 401
    assert login(proxied, "GHOST", "wrong-password", "127.0.0.99").status_code == 429


@pytest.mark.parametrize(
    "username", ["x" * 300, "nul\x00byte", wide("x") * 70, "", "bad name"], ids=repr
)
def test_a_name_no_user_can_have_fails_like_any_other_and_counts_per_source(
    booted: Booted, client: TestClient, username: str
) -> None:
    """Over-long names (the counter key column is 200 wide), NUL bytes (PostgreSQL refuses
    them): a plain 401 and a counted failure, never a 500."""
    for _ in range(MAX):
        resp = login(client, username, "wrong-password")
        assert resp.status_code == 401, resp.text
    assert whoami(client, booted.admin_token) == 429


# --- audit and uniform answers -----------------------------------------------------------------


def test_failures_and_locks_are_audited(booted: Booted, proxied: TestClient) -> None:
    alice = add_user(booted, proxied, "alice", PASSWORD)
    forged = f"jvt_{token_id(alice)}_{WRONG_SECRET}"
    for i in range(MAX):
        whoami(proxied, forged, source=f"127.0.0.{i + 1}")
    for _ in range(MAX):
        login(proxied, "nobody", "wrong-password", source="127.0.0.77")
    failed = audit_rows(booted.node, "auth.failed")
    assert len(failed) == 2 * MAX
    assert all(r.outcome == "denied" for r in failed)
    assert [r.actor for r in failed[:MAX]] == ["alice"] * MAX
    assert [r.source for r in failed[:MAX]] == [f"127.0.0.{i + 1}" for i in range(MAX)]
    assert {r.source for r in failed[MAX:]} == {"127.0.0.77"}
    locked = audit_rows(booted.node, "auth.locked_out")
    assert {(r.subject, r.outcome) for r in locked} == {
        ("user:alice", "denied"),
        ("src:127.0.0.77", "denied"),
        ("user:(unknown user)", "denied"),
    }
    # the audited refusals keep the chain intact, and hold no credential
    verify = proxied.post("/v1/audit/verify", headers=bearer(booted.admin_token) | via("::1"))
    assert verify.status_code == 200
    assert verify.json()["ok"] is True
    for row in failed + locked:
        assert WRONG_SECRET not in str(tuple(row))
        assert "wrong-password" not in str(tuple(row))


def test_the_refusal_is_identical_for_unknown_token_wrong_secret_and_unknown_user(
    booted: Booted, client: TestClient
) -> None:
    alice = add_user(booted, client, "alice", PASSWORD)
    add_user(booted, client, "nopass")  # a user without a password
    token_answers = [
        client.get("/v1/auth/whoami", headers=headers)
        for headers in (
            bearer("jvt_0123456789abcdef_" + WRONG_SECRET),  # unknown token id
            bearer(f"jvt_{token_id(alice)}_{WRONG_SECRET}"),  # wrong secret
            bearer("garbage"),  # not a token at all
            {},  # no token
        )
    ]
    assert {r.status_code for r in token_answers} == {401}
    assert len({r.text for r in token_answers}) == 1, [r.text for r in token_answers]
    login_answers = [
        login(client, "ghost", PASSWORD),  # unknown user
        login(client, "alice", "wrong-password"),  # wrong password
        login(client, "nopass", PASSWORD),  # user without a password
    ]
    assert {r.status_code for r in login_answers} == {401}
    assert len({r.text for r in login_answers}) == 1, [r.text for r in login_answers]
    # both say the same thing and name no part of the credential
    message = token_answers[0].json()["error"]["message"]
    assert message == login_answers[0].json()["error"]["message"]
    for word in ("user", "secret", "password", "exist", "unknown", "expired", "alice"):
        assert word not in message.lower()


def test_a_password_typed_into_the_user_field_is_stored_nowhere_yet_still_locks_out(
    booted: Booted, proxied: TestClient
) -> None:
    typed = "correcthorsebattery7"  # a valid user name, and someone's password
    for i in range(MAX):
        assert login(proxied, typed, "wrong-password", source=f"127.0.1.{i}").status_code == 401
    # names that are no user's lock out like users' do: answers do not tell which names exist
    assert login(proxied, typed, "wrong-password", source="127.0.1.200").status_code == 429
    with booted.node.read() as conn:
        counters = [tuple(r) for r in conn.execute(select(t.auth_failures))]
        audit = [tuple(r) for r in conn.execute(select(t.audit_events))]
    assert counters
    assert typed not in str(counters)
    assert typed not in str(audit)
    failed = audit_rows(booted.node, "auth.failed")
    assert {r.actor for r in failed} == {"(unknown user)"}

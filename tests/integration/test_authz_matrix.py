"""The authorization matrix: every route of the app x every role, anonymous and bad tokens.

``EXPECTED`` is the second, independent statement of who may call what (the first is
``jitvault.domain.permissions``). Every route the app serves must be listed here, and every route
listed here must exist: a new endpoint fails this suite until someone classifies it (deny by
default). Each cell sends a valid request (fixtures made first, fresh names per call), so an
allowed role must get its success status and a denied one exactly 403 (known roles) or 401 (no,
garbage, forged, revoked or expired credentials), with nothing changed in the state tables.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from jitvault.api import create_app
from jitvault.config import Settings
from jitvault.services import Node
from jitvault.storage import tables as t
from tests.conftest import Booted, make_settings
from tests.support import free_port

PUBLIC = "public"
ROLES = ("requester", "approver", "admin", "auditor")
#: callers that must be refused with 401 on every non-public route
BAD_CALLERS = (
    "anonymous",  # no Authorization header at all
    "garbage",  # not a token
    "forged",  # well formed, unknown token id
    "wrong-secret",  # a real token id (the admin's) with a wrong secret
    "revoked",  # an admin's revoked token
    "expired",  # an admin's expired token
    "disabled",  # a valid token of a disabled admin
)
CALLERS = ROLES + BAD_CALLERS

EVERYONE = frozenset(ROLES)
ADMIN = frozenset({"admin"})
ADMIN_AUDITOR = frozenset({"admin", "auditor"})

#: (method, path) -> the roles allowed, or PUBLIC. For the /users/{name}/tokens and
#: /tokens/{id} routes this is the rule for *another* user's tokens; the rules for one's own
#: tokens (everyone) are tested separately below.
EXPECTED: dict[tuple[str, str], frozenset[str] | str] = {
    # FastAPI's documentation routes
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
    # sys
    ("GET", "/v1/sys/health"): PUBLIC,
    ("GET", "/v1/sys/seal-status"): PUBLIC,
    ("POST", "/v1/sys/init"): PUBLIC,
    ("POST", "/v1/sys/unseal"): PUBLIC,
    ("POST", "/v1/sys/rotate-key"): ADMIN,
    ("GET", "/v1/sys/rekey-status"): ADMIN_AUDITOR,
    # auth
    ("POST", "/v1/auth/login"): PUBLIC,
    ("GET", "/v1/auth/whoami"): EVERYONE,
    # users and tokens
    ("POST", "/v1/users"): ADMIN,
    ("GET", "/v1/users"): ADMIN_AUDITOR,
    ("GET", "/v1/users/{name}"): ADMIN_AUDITOR,
    ("POST", "/v1/users/{name}/disable"): ADMIN,
    ("POST", "/v1/users/{name}/enable"): ADMIN,
    ("POST", "/v1/users/{name}/tokens"): ADMIN,
    ("GET", "/v1/users/{name}/tokens"): ADMIN_AUDITOR,
    ("DELETE", "/v1/tokens/{token_id}"): ADMIN,
    # another user's SSH keys (one's own: everyone, tested below)
    ("POST", "/v1/users/{name}/ssh-keys"): ADMIN,
    ("GET", "/v1/users/{name}/ssh-keys"): ADMIN_AUDITOR,
    ("DELETE", "/v1/users/{name}/ssh-keys/{fingerprint:path}"): ADMIN,
    # targets and accounts: everyone may see what exists (never a secret), only admins change
    ("POST", "/v1/targets"): ADMIN,
    ("GET", "/v1/targets"): EVERYONE,
    ("GET", "/v1/targets/{name}"): EVERYONE,
    ("PATCH", "/v1/targets/{name}"): ADMIN,
    ("POST", "/v1/targets/{name}/accounts"): ADMIN,
    ("GET", "/v1/targets/{name}/accounts"): EVERYONE,
    ("GET", "/v1/targets/{name}/accounts/{username}"): EVERYONE,
    ("PUT", "/v1/targets/{name}/accounts/{username}/secret"): ADMIN,
    ("POST", "/v1/targets/{name}/accounts/{username}/rotate"): ADMIN,
    ("POST", "/v1/targets/{name}/accounts/{username}/verify"): ADMIN,
    ("GET", "/v1/accounts"): EVERYONE,
    # account templates: everyone may see what can be asked for, only admins change them
    ("POST", "/v1/targets/{target}/templates"): ADMIN,
    ("GET", "/v1/templates"): EVERYONE,
    ("GET", "/v1/targets/{target}/templates"): EVERYONE,
    ("GET", "/v1/targets/{target}/templates/{name}"): EVERYONE,
    ("DELETE", "/v1/targets/{target}/templates/{name}"): ADMIN,
    # audit
    ("GET", "/v1/audit/events"): ADMIN_AUDITOR,
    ("POST", "/v1/audit/verify"): ADMIN_AUDITOR,
    ("GET", "/v1/audit/export"): ADMIN_AUDITOR,
    # the workflow. Requests and grants here are another user's (the victim's); deciding needs
    # the approver group the policy names, which the approver and admin users are in.
    ("POST", "/v1/requests"): frozenset({"requester", "approver", "admin"}),
    ("GET", "/v1/requests"): EVERYONE,  # each sees their own; reviewers see everyone's
    ("GET", "/v1/requests/{request_id}"): frozenset({"approver", "admin", "auditor"}),
    ("POST", "/v1/requests/{request_id}/approve"): frozenset({"approver", "admin"}),
    ("POST", "/v1/requests/{request_id}/deny"): frozenset({"approver", "admin"}),
    ("POST", "/v1/requests/{request_id}/cancel"): frozenset({"approver", "admin"}),
    ("GET", "/v1/sessions"): EVERYONE,
    ("GET", "/v1/sessions/{session_id}"): frozenset({"admin", "auditor"}),
    ("GET", "/v1/sessions/{session_id}/asciicast"): frozenset({"admin", "auditor"}),
    # only the grant's own user gets a session token for it: no role may take another's
    ("POST", "/v1/requests/{request_id}/connect"): frozenset(),
    ("POST", "/v1/requests/{request_id}/review"): frozenset({"approver", "admin", "auditor"}),
    ("GET", "/v1/grants"): EVERYONE,
    ("GET", "/v1/grants/{grant_id}"): frozenset({"approver", "admin", "auditor"}),
    ("POST", "/v1/grants/{grant_id}/revoke"): frozenset({"approver", "admin"}),
    ("PUT", "/v1/policies"): ADMIN,
    ("GET", "/v1/policies"): EVERYONE,
    ("POST", "/v1/policies/test"): frozenset({"approver", "admin", "auditor"}),
}

#: the policy the matrix runs under: the victim's requests need one approval from "ops", and
#: may be break-glass (active at once, flagged for review)
POLICY = """
rules:
  - name: victim-needs-ops
    match: {users: [victim, admin-user]}
    require_approvals: 1
    approvers: [ops]
    break_glass: allowed
"""

#: tables whose content a refused request must leave untouched (audit_events and
#: auth_failures legitimately grow when a bad credential is refused)
STATE_TABLES = tuple(
    table
    for table in t.metadata.sorted_tables
    if table.name not in ("audit_events", "audit_head", "auth_failures")
)


def app_routes(node: Node) -> set[tuple[str, str]]:
    """Every (method, path) the app serves. HEAD, which Starlette adds to GET, is folded in."""
    found: set[tuple[str, str]] = set()
    for ctx in iter_route_contexts(create_app(node).routes):
        methods = set(ctx.methods or ())
        if "GET" in methods:
            methods.discard("HEAD")
        assert ctx.path is not None
        found.update((m, ctx.path) for m in methods)
    return found


# --- the world each cell runs in ---------------------------------------------------------------


@dataclass
class Call:
    method: str
    url: str
    json: Any = None
    params: dict[str, Any] | None = None
    #: the status an allowed caller must get
    ok: int = 200


@dataclass
class World:
    """Users of every role with tokens, a victim user, a target with an account."""

    api: TestClient
    node: Node
    admin_token: str
    tokens: dict[str, str | None] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    victim: str = "victim"
    victim_token: str = ""
    target: str = "db1"
    account: str = "svc"
    #: the victim's own account on the target (its user name), which elevations give a role to
    own_account: str = "victim"
    template: str = "readers"
    login_user: str = "login-user"
    login_password: str = "login-password-123"
    _seq: Iterator[int] = field(default_factory=itertools.count)

    def fresh(self, stem: str) -> str:
        return f"{stem}-{next(self._seq)}"

    def admin(self, method: str, url: str, **kw: Any) -> Any:
        resp = self.api.request(
            method, url, headers={"Authorization": f"Bearer {self.admin_token}"}, **kw
        )
        assert resp.status_code < 300, (method, url, resp.status_code, resp.text)
        return resp.json() if resp.content else None

    def new_token(self, user: str, **body: Any) -> str:
        token: str = self.admin("POST", f"/v1/users/{user}/tokens", json=body)["token"]
        return token

    def victim_request(self, break_glass: bool = False) -> dict[str, Any]:
        """A fresh request of the victim's: pending, or active with a grant if break-glass."""
        body = {
            "target": self.target,
            "role": "pg_monitor",
            "duration": "1h",
            "reason": "matrix",
            "break_glass": break_glass,
        }
        resp = self.api.post(
            "/v1/requests", json=body, headers={"Authorization": f"Bearer {self.victim_token}"}
        )
        assert resp.status_code == 201, resp.text
        out: dict[str, Any] = resp.json()
        assert out["state"] == ("active" if break_glass else "pending"), out
        return out

    def victim_session(self) -> int:
        """A session of the victim's (opened through the service: no proxy needed)."""
        from jitvault.domain import Sensitive
        from jitvault.services import sessions

        rid = self.victim_request(break_glass=True)["id"]
        info = self.api.post(
            f"/v1/requests/{rid}/connect",
            json={},
            headers={"Authorization": f"Bearer {self.victim_token}"},
        ).json()
        return sessions.open_session(self.node, Sensitive(info["password"]), "postgres").session_id

    def headers(self, caller: str) -> dict[str, str]:
        token = self.tokens[caller]
        return {} if token is None else {"Authorization": f"Bearer {token}"}

    def send(self, caller: str, call: Call) -> Any:
        return self.api.request(
            call.method,
            call.url,
            json=call.json,
            params=call.params,
            headers=self.headers(caller),
        )


def token_id(token: str) -> str:
    return token.split("_")[1]


def make_world(booted: Booted, api: TestClient) -> World:
    # the api fixture carries the bootstrap admin's token by default: cells set their own
    api.headers.pop("Authorization", None)
    w = World(api=api, node=booted.node, admin_token=booted.admin_token)
    for role in ROLES:
        name = f"{role}-user"
        groups = ["ops"] if role in ("approver", "admin") else []
        w.admin("POST", "/v1/users", json={"name": name, "role": role, "groups": groups})
        w.names[role] = name
        w.tokens[role] = w.new_token(name, description="matrix")
    w.admin("POST", "/v1/users", json={"name": w.victim, "role": "requester"})
    w.victim_token = w.new_token(w.victim)
    w.admin("PUT", "/v1/policies", json={"document": POLICY})
    w.admin(
        "POST",
        "/v1/users",
        json={"name": w.login_user, "role": "requester", "password": w.login_password},
    )
    w.admin(
        "POST",
        "/v1/targets",
        json={
            "name": w.target,
            "kind": "postgres",
            # a closed port: no test here may touch a real database through the plugin
            "options": {"host": "127.0.0.1", "port": free_port()},
            "admin_user": "postgres",
            "admin_password": "target-admin-password",
        },
    )
    w.admin(
        "POST",
        f"/v1/targets/{w.target}/accounts",
        json={"username": w.account, "mode": "injected", "password": "account-password"},
    )
    for own in (w.own_account, w.names["admin"]):  # the users the policy lets elevate
        w.admin(
            "POST",
            f"/v1/targets/{w.target}/accounts",
            json={"username": own, "mode": "elevation", "password": "own-password"},
        )
    w.admin(
        "POST",
        f"/v1/targets/{w.target}/templates",
        json={"name": w.template, "grant_roles": ["pg_read_all_data"]},
    )
    admin_name = w.names["admin"]
    w.tokens["anonymous"] = None
    w.tokens["garbage"] = "not-a-token"
    w.tokens["forged"] = "jvt_0123456789abcdef_" + "A" * 43
    w.tokens["wrong-secret"] = f"jvt_{token_id(w.tokens['admin'] or '')}_" + "B" * 43
    revoked = w.new_token(admin_name, description="revoked")
    w.admin("DELETE", f"/v1/tokens/{token_id(revoked)}")
    w.tokens["revoked"] = revoked
    expired = w.new_token(admin_name, description="expired", ttl="1h")
    with booted.node.db.begin() as conn:
        conn.execute(
            update(t.api_tokens)
            .where(t.api_tokens.c.id == token_id(expired))
            .values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
        )
    w.tokens["expired"] = expired
    w.admin("POST", "/v1/users", json={"name": "disabled-admin", "role": "admin"})
    disabled = w.new_token("disabled-admin")
    with booted.node.db.begin() as conn:
        conn.execute(
            update(t.users).where(t.users.c.name == "disabled-admin").values(disabled=True)
        )
    w.tokens["disabled"] = disabled
    assert set(w.tokens) == set(CALLERS)
    return w


# One builder per route: a valid request for it (fresh names so nothing collides).
Builder = Callable[[World, str], Call]


def _template_to_remove(w: World, caller: str) -> Call:
    name = f"gone_{next(w._seq)}"
    w.admin("POST", f"/v1/targets/{w.target}/templates", json={"name": name})
    return Call("DELETE", f"/v1/targets/{w.target}/templates/{name}")


def public_key_line() -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


def _fresh_user(w: World) -> str:
    """A requester of its own, for a call that changes its user (disable, enable)."""
    name = w.fresh("who")
    w.admin("POST", "/v1/users", json={"name": name, "role": "requester"})
    return name


def _victim_key_to_remove(w: World, caller: str) -> Call:
    added = w.admin(
        "POST", f"/v1/users/{w.victim}/ssh-keys", json={"public_key": public_key_line()}
    )
    fingerprint = quote(added["fingerprint"], safe="")
    return Call("DELETE", f"/v1/users/{w.victim}/ssh-keys/{fingerprint}", ok=204)


def _target_to_update(w: World, caller: str) -> Call:
    name = w.fresh("upd")
    w.admin("POST", "/v1/targets", json={"name": name, "kind": "postgres",
            "options": {"host": "127.0.0.1"}})  # fmt: skip
    return Call("PATCH", f"/v1/targets/{name}", json={"options": {"port": 5433}})


def _victim_token_to_revoke(w: World, caller: str) -> Call:
    return Call("DELETE", f"/v1/tokens/{token_id(w.new_token(w.victim))}", ok=204)


REQUESTS: dict[tuple[str, str], Builder] = {
    ("GET", "/openapi.json"): lambda w, c: Call("GET", "/openapi.json"),
    ("GET", "/docs"): lambda w, c: Call("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"): lambda w, c: Call("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"): lambda w, c: Call("GET", "/redoc"),
    ("GET", "/v1/sys/health"): lambda w, c: Call("GET", "/v1/sys/health"),
    ("GET", "/v1/sys/seal-status"): lambda w, c: Call("GET", "/v1/sys/seal-status"),
    # already initialized: 409 is the valid answer; unsealing an unsealed vault reports its
    # status (while sealed, the file provider answers 409: see test_sealed.py)
    ("POST", "/v1/sys/init"): lambda w, c: Call(
        "POST", "/v1/sys/init", json={"admin": "admin"}, ok=409
    ),
    ("POST", "/v1/sys/unseal"): lambda w, c: Call(
        "POST", "/v1/sys/unseal", json={"share": "1-abcdef"}
    ),
    ("POST", "/v1/sys/rotate-key"): lambda w, c: Call("POST", "/v1/sys/rotate-key"),
    ("GET", "/v1/sys/rekey-status"): lambda w, c: Call("GET", "/v1/sys/rekey-status"),
    ("POST", "/v1/auth/login"): lambda w, c: Call(
        "POST",
        "/v1/auth/login",
        json={"username": w.login_user, "password": w.login_password},
    ),
    ("GET", "/v1/auth/whoami"): lambda w, c: Call("GET", "/v1/auth/whoami"),
    ("POST", "/v1/users"): lambda w, c: Call(
        "POST", "/v1/users", json={"name": w.fresh("new-user"), "role": "requester"}, ok=201
    ),
    ("GET", "/v1/users"): lambda w, c: Call("GET", "/v1/users"),
    ("GET", "/v1/users/{name}"): lambda w, c: Call("GET", f"/v1/users/{w.victim}"),
    ("POST", "/v1/users/{name}/disable"): lambda w, c: Call(
        "POST", f"/v1/users/{_fresh_user(w)}/disable"
    ),
    ("POST", "/v1/users/{name}/enable"): lambda w, c: Call(
        "POST", f"/v1/users/{_fresh_user(w)}/enable"
    ),
    ("POST", "/v1/users/{name}/tokens"): lambda w, c: Call(
        "POST", f"/v1/users/{w.victim}/tokens", json={"description": "x"}, ok=201
    ),
    ("GET", "/v1/users/{name}/tokens"): lambda w, c: Call("GET", f"/v1/users/{w.victim}/tokens"),
    ("DELETE", "/v1/tokens/{token_id}"): _victim_token_to_revoke,
    ("POST", "/v1/users/{name}/ssh-keys"): lambda w, c: Call(
        "POST", f"/v1/users/{w.victim}/ssh-keys", json={"public_key": public_key_line()}, ok=201
    ),
    ("GET", "/v1/users/{name}/ssh-keys"): lambda w, c: Call(
        "GET", f"/v1/users/{w.victim}/ssh-keys"
    ),
    ("DELETE", "/v1/users/{name}/ssh-keys/{fingerprint:path}"): _victim_key_to_remove,
    ("POST", "/v1/targets"): lambda w, c: Call(
        "POST",
        "/v1/targets",
        json={"name": w.fresh("tgt"), "kind": "postgres", "options": {"host": "127.0.0.1"}},
        ok=201,
    ),
    ("GET", "/v1/targets"): lambda w, c: Call("GET", "/v1/targets"),
    ("GET", "/v1/targets/{name}"): lambda w, c: Call("GET", f"/v1/targets/{w.target}"),
    ("PATCH", "/v1/targets/{name}"): _target_to_update,
    ("POST", "/v1/targets/{name}/accounts"): lambda w, c: Call(
        "POST",
        f"/v1/targets/{w.target}/accounts",
        json={"username": w.fresh("acct"), "mode": "injected", "password": "pw-123"},
        ok=201,
    ),
    ("GET", "/v1/targets/{name}/accounts"): lambda w, c: Call(
        "GET", f"/v1/targets/{w.target}/accounts"
    ),
    ("GET", "/v1/targets/{name}/accounts/{username}"): lambda w, c: Call(
        "GET", f"/v1/targets/{w.target}/accounts/{w.account}"
    ),
    ("PUT", "/v1/targets/{name}/accounts/{username}/secret"): lambda w, c: Call(
        "PUT",
        f"/v1/targets/{w.target}/accounts/{w.account}/secret",
        json={"password": w.fresh("new-password")},
    ),
    # the matrix's target is not a reachable database: an allowed caller gets as far as the
    # target (502), a refused one never does
    ("POST", "/v1/targets/{name}/accounts/{username}/rotate"): lambda w, c: Call(
        "POST", f"/v1/targets/{w.target}/accounts/{w.account}/rotate", ok=502
    ),
    ("POST", "/v1/targets/{name}/accounts/{username}/verify"): lambda w, c: Call(
        "POST", f"/v1/targets/{w.target}/accounts/{w.account}/verify", ok=502
    ),
    ("GET", "/v1/accounts"): lambda w, c: Call("GET", "/v1/accounts"),
    ("POST", "/v1/targets/{target}/templates"): lambda w, c: Call(
        "POST",
        f"/v1/targets/{w.target}/templates",
        json={"name": f"tpl_{next(w._seq)}", "grant_roles": ["pg_monitor"]},
        ok=201,
    ),
    ("GET", "/v1/templates"): lambda w, c: Call("GET", "/v1/templates"),
    ("GET", "/v1/targets/{target}/templates"): lambda w, c: Call(
        "GET", f"/v1/targets/{w.target}/templates"
    ),
    ("GET", "/v1/targets/{target}/templates/{name}"): lambda w, c: Call(
        "GET", f"/v1/targets/{w.target}/templates/{w.template}"
    ),
    ("DELETE", "/v1/targets/{target}/templates/{name}"): _template_to_remove,
    ("GET", "/v1/audit/events"): lambda w, c: Call("GET", "/v1/audit/events", params={"limit": 10}),
    ("POST", "/v1/audit/verify"): lambda w, c: Call("POST", "/v1/audit/verify"),
    ("GET", "/v1/audit/export"): lambda w, c: Call(
        "GET", "/v1/audit/export", params={"format": "jsonl"}
    ),
    ("POST", "/v1/requests"): lambda w, c: Call(
        "POST",
        "/v1/requests",
        json={"target": w.target, "account": w.account, "duration": "1h", "reason": "matrix"},
        ok=201,
    ),
    ("GET", "/v1/requests"): lambda w, c: Call("GET", "/v1/requests"),
    ("GET", "/v1/requests/{request_id}"): lambda w, c: Call(
        "GET", f"/v1/requests/{w.victim_request()['id']}"
    ),
    ("POST", "/v1/requests/{request_id}/approve"): lambda w, c: Call(
        "POST", f"/v1/requests/{w.victim_request()['id']}/approve", json={"comment": "ok"}
    ),
    ("POST", "/v1/requests/{request_id}/deny"): lambda w, c: Call(
        "POST", f"/v1/requests/{w.victim_request()['id']}/deny", json={"reason": "no"}
    ),
    ("GET", "/v1/sessions"): lambda w, c: Call("GET", "/v1/sessions"),
    ("GET", "/v1/sessions/{session_id}"): lambda w, c: Call(
        "GET", f"/v1/sessions/{w.victim_session()}"
    ),
    # the victim's session is a PostgreSQL one: it recorded no terminal (404 when allowed)
    ("GET", "/v1/sessions/{session_id}/asciicast"): lambda w, c: Call(
        "GET", f"/v1/sessions/{w.victim_session()}/asciicast", ok=404
    ),
    ("POST", "/v1/requests/{request_id}/connect"): lambda w, c: Call(
        "POST", f"/v1/requests/{w.victim_request(break_glass=True)['id']}/connect", json={}
    ),
    ("POST", "/v1/requests/{request_id}/cancel"): lambda w, c: Call(
        "POST", f"/v1/requests/{w.victim_request()['id']}/cancel"
    ),
    ("POST", "/v1/requests/{request_id}/review"): lambda w, c: Call(
        "POST",
        f"/v1/requests/{w.victim_request(break_glass=True)['id']}/review",
        json={"comment": "seen"},
    ),
    ("GET", "/v1/grants"): lambda w, c: Call("GET", "/v1/grants"),
    ("GET", "/v1/grants/{grant_id}"): lambda w, c: Call(
        "GET", f"/v1/grants/{w.victim_request(break_glass=True)['grant_id']}"
    ),
    ("POST", "/v1/grants/{grant_id}/revoke"): lambda w, c: Call(
        "POST",
        f"/v1/grants/{w.victim_request(break_glass=True)['grant_id']}/revoke",
        json={"reason": "matrix"},
    ),
    ("PUT", "/v1/policies"): lambda w, c: Call("PUT", "/v1/policies", json={"document": POLICY}),
    ("GET", "/v1/policies"): lambda w, c: Call("GET", "/v1/policies"),
    ("POST", "/v1/policies/test"): lambda w, c: Call(
        "POST",
        "/v1/policies/test",
        json={
            "as_user": w.victim,
            "target": w.target,
            "role": "pg_monitor",
            "duration": "1h",
        },
    ),
}


def state_snapshot(node: Node) -> dict[str, list[tuple[Any, ...]]]:
    with node.read() as conn:
        return {
            table.name: sorted((tuple(row) for row in conn.execute(select(table))), key=repr)
            for table in STATE_TABLES
        }


def check_cell(w: World, route: tuple[str, str], caller: str) -> str | None:
    """Send one valid request for ``route`` as ``caller``; a description of what was wrong."""
    rule = EXPECTED[route]
    call = REQUESTS[route](w, caller)
    allowed = rule == PUBLIC or caller in rule
    before = None if allowed else state_snapshot(w.node)
    resp = w.send(caller, call)
    where = f"{route[0]} {route[1]} as {caller}"
    if allowed:
        if resp.status_code != call.ok:
            return f"{where}: expected {call.ok}, got {resp.status_code} {resp.text[:200]}"
        return None
    want = 403 if caller in ROLES else 401
    if resp.status_code != want:
        return f"{where}: expected {want}, got {resp.status_code} {resp.text[:200]}"
    code = resp.json()["error"]["code"]
    if code != ("forbidden" if want == 403 else "unauthenticated"):
        return f"{where}: error code {code!r}"
    if want == 401 and resp.headers.get("www-authenticate") != "Bearer":
        return f"{where}: 401 without WWW-Authenticate: Bearer"
    if state_snapshot(w.node) != before:
        return f"{where}: refused, yet the state changed"
    return None


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """The matrix sends well over ten bad credentials from the one TestClient source: raise the
    lockout threshold so refusals stay 401 (lockout has its own tests in test_lockout.py)."""
    return make_settings(tmp_path / "data", database_url, auth={"max_failures": 1_000_000})


@pytest.fixture
def world(booted: Booted, api: TestClient) -> World:
    return make_world(booted, api)


# --- the table covers the app exactly -----------------------------------------------------------


def test_every_served_route_is_classified_in_the_expected_table(node: Node) -> None:
    unclassified = app_routes(node) - set(EXPECTED)
    assert not unclassified, f"classify these routes in EXPECTED (deny by default): {unclassified}"


def test_the_expected_table_lists_no_route_the_app_does_not_serve(node: Node) -> None:
    stale = set(EXPECTED) - app_routes(node)
    assert not stale, f"EXPECTED lists routes the app does not serve: {stale}"


def test_every_classified_route_has_a_valid_request_to_send() -> None:
    assert set(REQUESTS) == set(EXPECTED)


def test_every_known_role_is_admitted_somewhere_and_refused_somewhere() -> None:
    """Guards the table itself: a role that may do everything or nothing is a typo."""
    for role in ROLES:
        rules = [r for r in EXPECTED.values() if r != PUBLIC]
        assert any(role in r for r in rules), role
        if role != "admin":
            assert any(role not in r for r in rules), role
    # admins may do everything, except use someone else's access: only a grant's own user
    # gets a session token for it
    own_only = {("POST", "/v1/requests/{request_id}/connect")}
    assert all(r == PUBLIC or "admin" in r for k, r in EXPECTED.items() if k not in own_only)
    assert all(EXPECTED[k] == frozenset() for k in own_only)


# --- the matrix ------------------------------------------------------------------------------


@pytest.mark.parametrize("route", sorted(EXPECTED), ids=lambda r: f"{r[0]} {r[1]}")
def test_route_admits_exactly_its_roles_and_refuses_bad_credentials(
    world: World, route: tuple[str, str]
) -> None:
    problems = [p for caller in CALLERS if (p := check_cell(world, route, caller))]
    assert not problems, "\n".join(problems)


# --- one's own tokens: every role -----------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_every_role_may_create_a_token_for_itself_and_use_it(world: World, role: str) -> None:
    name = world.names[role]
    resp = world.send(role, Call("POST", f"/v1/users/{name}/tokens", json={"ttl": "1h"}))
    assert resp.status_code == 201, resp.text
    new = resp.json()["token"]
    who = world.api.get("/v1/auth/whoami", headers={"Authorization": f"Bearer {new}"})
    assert who.status_code == 200
    assert who.json()["name"] == name


@pytest.mark.parametrize("role", ROLES)
def test_every_role_may_register_list_and_remove_its_own_ssh_keys(world: World, role: str) -> None:
    name = world.names[role]
    added = world.send(
        role, Call("POST", f"/v1/users/{name}/ssh-keys", json={"public_key": public_key_line()})
    )
    assert added.status_code == 201, added.text
    fingerprint = added.json()["fingerprint"]
    listed = world.send(role, Call("GET", f"/v1/users/{name}/ssh-keys"))
    assert [k["fingerprint"] for k in listed.json()] == [fingerprint]
    url = f"/v1/users/{name}/ssh-keys/{quote(fingerprint, safe='')}"
    assert world.send(role, Call("DELETE", url)).status_code == 204
    assert world.send(role, Call("GET", f"/v1/users/{name}/ssh-keys")).json() == []


@pytest.mark.parametrize("role", ROLES)
def test_every_role_may_create_a_token_for_itself_under_any_spelling_of_its_name(
    world: World, role: str
) -> None:
    """``REQUESTER-USER`` is the same user as ``requester-user`` (NFKC case-folding)."""
    upper = world.names[role].upper()
    resp = world.send(role, Call("POST", f"/v1/users/{upper}/tokens", json={}))
    assert resp.status_code == 201, resp.text


@pytest.mark.parametrize("role", [r for r in ROLES if r != "admin"])
def test_a_full_width_admin_name_is_still_another_user(world: World, role: str) -> None:
    """The full-width form of a name normalizes to it: no bypass of the 'self' rule."""
    full_width = "".join(chr(ord(ch) + 0xFEE0) if ch.isalnum() else ch for ch in "admin")
    resp = world.send(role, Call("POST", f"/v1/users/{full_width}/tokens", json={}))
    assert resp.status_code == 403, resp.text


@pytest.mark.parametrize("role", ROLES)
def test_every_role_may_list_its_own_tokens(world: World, role: str) -> None:
    name = world.names[role]
    resp = world.send(role, Call("GET", f"/v1/users/{name}/tokens"))
    assert resp.status_code == 200, resp.text
    own_id = token_id(world.tokens[role] or "")
    assert own_id in {tok["id"] for tok in resp.json()}
    assert all("secret" not in key and "hash" not in key for tok in resp.json() for key in tok)


@pytest.mark.parametrize("role", ROLES)
def test_every_role_may_revoke_its_own_token_which_then_stops_working(
    world: World, role: str
) -> None:
    name = world.names[role]
    spare = world.new_token(name, description="spare")
    resp = world.send(role, Call("DELETE", f"/v1/tokens/{token_id(spare)}"))
    assert resp.status_code == 204, resp.text
    who = world.api.get("/v1/auth/whoami", headers={"Authorization": f"Bearer {spare}"})
    assert who.status_code == 401
    # the token used for the call is untouched
    assert world.send(role, Call("GET", "/v1/auth/whoami")).status_code == 200


@pytest.mark.parametrize("role", [r for r in ROLES if r != "admin"])
def test_a_non_admin_cannot_revoke_another_users_token_which_keeps_working(
    world: World, role: str
) -> None:
    other = world.tokens["admin"] or ""
    resp = world.send(role, Call("DELETE", f"/v1/tokens/{token_id(other)}"))
    assert resp.status_code == 403, resp.text
    who = world.api.get("/v1/auth/whoami", headers={"Authorization": f"Bearer {other}"})
    assert who.status_code == 200


def test_an_admin_may_revoke_another_users_token_which_then_stops_working(world: World) -> None:
    victim = world.tokens["requester"] or ""
    resp = world.send("admin", Call("DELETE", f"/v1/tokens/{token_id(victim)}"))
    assert resp.status_code == 204, resp.text
    who = world.api.get("/v1/auth/whoami", headers={"Authorization": f"Bearer {victim}"})
    assert who.status_code == 401


def test_a_token_made_by_an_admin_for_another_user_acts_as_that_user(world: World) -> None:
    resp = world.send("admin", Call("POST", f"/v1/users/{world.victim}/tokens", json={}))
    assert resp.status_code == 201
    token = resp.json()["token"]
    who = world.api.get("/v1/auth/whoami", headers={"Authorization": f"Bearer {token}"})
    assert who.json()["name"] == world.victim
    assert who.json()["role"] == "requester"
    # and it carries the victim's rights, not the admin's
    denied = world.api.get("/v1/users", headers={"Authorization": f"Bearer {token}"})
    assert denied.status_code == 403


def test_the_token_header_alternative_is_authenticated_like_the_bearer_one(world: World) -> None:
    good = world.api.get("/v1/auth/whoami", headers={"X-Jitvault-Token": world.admin_token})
    assert good.status_code == 200
    bad = world.api.get("/v1/auth/whoami", headers={"X-Jitvault-Token": "jvt_garbage"})
    assert bad.status_code == 401


# --- one's own requests and grants ---------------------------------------------------------------


def test_a_requester_may_read_and_cancel_its_own_request_and_read_its_own_grant(
    world: World,
) -> None:
    mine = world.victim_request()
    victim = {"Authorization": f"Bearer {world.victim_token}"}
    assert world.api.get(f"/v1/requests/{mine['id']}", headers=victim).status_code == 200
    listed = world.api.get("/v1/requests", headers=victim).json()
    assert {r["requester"] for r in listed} == {world.victim}
    cancel = world.api.post(f"/v1/requests/{mine['id']}/cancel", headers=victim)
    assert cancel.status_code == 200, cancel.text
    assert cancel.json()["state"] == "cancelled"
    grant = world.victim_request(break_glass=True)["grant_id"]
    assert world.api.get(f"/v1/grants/{grant}", headers=victim).status_code == 200
    # but not someone else's request
    other = world.send("requester", REQUESTS[("POST", "/v1/requests")](world, "requester"))
    assert other.status_code == 201
    peek = world.api.get(f"/v1/requests/{other.json()['id']}", headers=victim)
    assert peek.status_code == 403


def test_no_one_may_approve_or_deny_their_own_request_even_an_admin(world: World) -> None:
    body = {
        "target": world.target,
        "role": "pg_monitor",
        "duration": "1h",
        "reason": "mine",
    }
    filed = world.send("admin", Call("POST", "/v1/requests", json=body))
    assert filed.status_code == 201
    assert filed.json()["state"] == "pending"
    rid = filed.json()["id"]
    approve = world.send("admin", Call("POST", f"/v1/requests/{rid}/approve", json={}))
    assert approve.status_code == 403
    deny = world.send("admin", Call("POST", f"/v1/requests/{rid}/deny", json={"reason": "x"}))
    assert deny.status_code == 403
    other = world.send("approver", Call("POST", f"/v1/requests/{rid}/approve", json={}))
    assert other.status_code == 200
    assert other.json()["state"] == "active"


def test_no_one_may_review_their_own_break_glass_access_even_an_admin(world: World) -> None:
    body = {
        "target": world.target,
        "role": "pg_monitor",
        "duration": "1h",
        "reason": "fire",
        "break_glass": True,
    }
    filed = world.send("admin", Call("POST", "/v1/requests", json=body))
    assert filed.status_code == 201
    assert filed.json()["review_required"] is True
    rid = filed.json()["id"]
    own = world.send("admin", Call("POST", f"/v1/requests/{rid}/review", json={}))
    assert own.status_code == 403
    assert "own" in own.json()["error"]["message"]
    other = world.send("auditor", Call("POST", f"/v1/requests/{rid}/review", json={}))
    assert other.status_code == 200

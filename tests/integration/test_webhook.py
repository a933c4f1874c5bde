"""The webhook notifier against a real HTTP receiver on 127.0.0.1.

The workflow runs through the services on a real node (SQLite or PostgreSQL, ``--db``); the
background job runner delivers the queued notifications to a ``ThreadingHTTPServer`` the test
starts, which records every request and can be told to fail, redirect or hang. Time is driven
through ``node.clock`` (never slept through), loops are bounded, and every server is stopped at
teardown.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError as PydanticValidationError

from jitvault.audit import list_events
from jitvault.config import NotifierSettings
from jitvault.domain import AccessKind, AccountMode, Principal, RequestState, Role, Sensitive
from jitvault.services import Node, grants, jobs, policies, requests, system, targets, users
from jitvault.services.requests import NewRequest
from jitvault.storage import repositories as repo
from jitvault.storage import workflow
from jitvault_webhook import (
    USER_AGENT,
    WebhookError,
    WebhookNotifier,
    WebhookOptions,
    verify_signature,
)
from tests.conftest import grant_id_of, make_settings
from tests.support import free_port

SECRET_ENV = "JV_HOOK_SECRET"
SIGNING_SECRET = "whsec-test-signing-secret-7f3a"
CANARY = "CANARY-vaulted-password-4b1d9e"
ERROR_BODY = "RECEIVER-ERROR-BODY-must-not-leak"
HANG_LIMIT = 30.0  # a hanging handler gives up after this long (bounded); teardown releases it

POLICY = """
rules:
  - name: app-auto
    match: {accounts: [app]}
    auto_approve: true
    max_duration: 8h
  - name: ops-break-glass
    match: {accounts: [ops]}
    require_approvals: 1
    approvers: [dba]
    break_glass: allowed
  - name: prod-approval
    match: {accounts: [prod]}
    require_approvals: 1
    approvers: [dba]
"""


# --- the receiver --------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    status: int  # what the receiver answered (0: it hung up without answering)

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A real HTTP server on 127.0.0.1 recording every POST; its behaviour is set per test."""

    def __init__(self) -> None:
        self.fail_first = 0
        self.always_fail = False
        self.redirect = False
        self.hang = False
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.seen: list[Received] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="webhook-receiver", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/jitvault?token=path-secret"

    def delivered(self) -> list[Received]:
        """Requests answered with 2xx (what a real receiver would have accepted)."""
        with self.lock:
            return [r for r in self.seen if 200 <= r.status < 300]

    def attempts(self) -> int:
        with self.lock:
            return len(self.seen)

    def decide(self) -> int:
        with self.lock:
            answered = len(self.seen)
        if self.hang:
            return 0
        if self.always_fail or answered < self.fail_first:
            return 500
        if self.redirect:
            return 302
        return 204


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            status = receiver.decide()
            with receiver.lock:
                receiver.seen.append(
                    Received(
                        self.path, {k.lower(): v for k, v in self.headers.items()}, body, status
                    )
                )
            if status == 0:
                receiver.release.wait(HANG_LIMIT)
                self.close_connection = True
                return
            payload = ERROR_BODY.encode() if status >= 400 else b""
            self.send_response(status)
            if status == 302:
                self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    rec.thread.start()
    try:
        yield rec
    finally:
        rec.release.set()
        rec.server.shutdown()
        rec.server.server_close()
        rec.thread.join(10)


# --- the node ------------------------------------------------------------------------------------


class Clock:
    """Wall time plus an offset the test moves forward (jobs are enqueued at wall time)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@dataclass
class World:
    node: Node
    clock: Clock
    admin: Principal
    alice: Principal  # requester
    bob: Principal  # approver in group dba


OpenWorld = Callable[..., World]


@pytest.fixture
def open_world(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[OpenWorld]:
    """Build an initialized node whose one notifier ``hook`` posts to ``url``."""
    monkeypatch.setenv(SECRET_ENV, SIGNING_SECRET)
    opened: list[Node] = []

    def build(url: str, events: list[str] | None = None, **options: Any) -> World:
        assert not opened, "one node per test"
        settings = make_settings(tmp_path / "data", database_url)
        settings.notifiers = [
            NotifierSettings(
                name="hook",
                kind="webhook",
                events=events or ["*"],
                options={"url": url, **options},
                secret_env=SECRET_ENV,
            )
        ]
        node = Node.open(settings)
        opened.append(node)
        clock = Clock()
        node.clock = clock
        system.initialize(node, "admin")
        with node.read() as conn:
            a = repo.user_get(conn, "admin")
        admin = Principal(a.id, a.name, Role.ADMIN, ())
        u_alice = users.add_user(node, admin, "alice", Role.REQUESTER)
        u_bob = users.add_user(node, admin, "bob", Role.APPROVER, ["dba"])
        policies.apply_policy(node, admin, POLICY)
        # a closed port: no cleanup job ever reaches a real database
        targets.add_target(
            node, admin, "db1", "postgres", {"host": "127.0.0.1", "port": free_port()}
        )
        for account in ("app", "ops", "prod"):
            targets.add_account(
                node, admin, "db1", account, AccountMode.INJECTED, Sensitive(CANARY)
            )
        return World(
            node,
            clock,
            admin,
            Principal(u_alice.id, u_alice.name, Role.REQUESTER, tuple(u_alice.groups)),
            Principal(u_bob.id, u_bob.name, Role.APPROVER, tuple(u_bob.groups)),
        )

    try:
        yield build
    finally:
        for node in opened:
            node.close()


def _ask(w: World, account: str, *, break_glass: bool = False, reason: str = "INC-42 fix") -> Any:
    return requests.create_request(
        w.node,
        w.alice,
        NewRequest(
            target="db1",
            kind=AccessKind.ACCOUNT,
            name=account,
            duration=timedelta(hours=1),
            reason=reason,
            break_glass=break_glass,
        ),
    )


def _drain(w: World, rounds: int = 20) -> None:
    """Run due jobs until none is left (bounded)."""
    for _ in range(rounds):
        if jobs.run_due_jobs(w.node) == 0:
            return
    pytest.fail(f"jobs still due after {rounds} rounds")


def _notify_jobs(w: World) -> list[Any]:
    with w.node.read() as conn:
        return [j for j in workflow.job_list(conn) if j.kind == "notify"]


def _retry_until_settled(w: World, rounds: int = 15) -> None:
    """Run jobs, then jump the clock past the longest backoff, until no notify job is queued."""
    step = w.node.settings.workflow.job_backoff_max + 1
    for _ in range(rounds):
        jobs.run_due_jobs(w.node)
        if all(j.state not in ("queued", "running") for j in _notify_jobs(w)):
            return
        w.clock.advance(step)
    pytest.fail(f"notify jobs still pending after {rounds} rounds")


def _full_workflow(w: World) -> dict[str, Any]:
    auto = _ask(w, "app")
    glass = _ask(w, "ops", break_glass=True, reason="INC-99 outage, paging nobody")
    pending = _ask(w, "prod")
    approved = requests.approve(w.node, w.bob, pending.id, comment="ok")
    grant_id = grant_id_of(w.node, auto)
    grants.revoke_grant(w.node, w.admin, grant_id, "done early")
    # the other two grants (1h) are within the 5 min warning window 58 minutes from now
    swept = grants.sweep(w.node, at=w.clock() + timedelta(minutes=58))
    return {
        "auto": auto,
        "glass": glass,
        "pending": pending,
        "approved": approved,
        "revoked_grant": grant_id,
        "warned": swept.warned,
    }


# --- (a) every workflow event arrives, signed -------------------------------------------------


def test_every_workflow_event_arrives_signed_with_event_header_and_user_agent(
    receiver: Receiver, open_world: OpenWorld
) -> None:
    w = open_world(receiver.url)
    out = _full_workflow(w)
    assert out["auto"].state == RequestState.ACTIVE
    assert out["glass"].state == RequestState.ACTIVE
    assert out["pending"].state == RequestState.PENDING
    assert out["approved"].state == RequestState.ACTIVE
    assert out["warned"] == 2
    _drain(w)

    got = receiver.delivered()
    assert receiver.attempts() == len(got), "no delivery failed"
    assert all(j.state == "done" for j in _notify_jobs(w))
    names = [r.json()["event"] for r in got]
    assert sorted(set(names)) == sorted(
        {
            "request.created",
            "request.decided",
            "grant.created",
            "grant.expiring",
            "grant.revoked",
            "break_glass",
        }
    )
    assert names.count("request.created") == 3
    assert names.count("grant.created") == 3
    assert names.count("request.decided") == 3
    assert names.count("break_glass") == 1
    assert names.count("grant.revoked") == 1
    assert names.count("grant.expiring") == 2

    for r in got:
        event = r.json()
        assert r.path == "/hooks/jitvault?token=path-secret"
        assert r.headers["content-type"] == "application/json"
        assert r.headers["user-agent"] == USER_AGENT
        assert r.headers["x-jitvault-event"] == event["event"]
        assert event["target"] == "db1"
        assert event["requester"] == "alice"
        ts, sig = r.headers["x-jitvault-timestamp"], r.headers["x-jitvault-signature"]
        assert sig.startswith("v1=")
        assert verify_signature(SIGNING_SECRET, ts, r.body, sig)
        tampered = bytearray(r.body)
        tampered[len(tampered) // 2] ^= 0x01
        assert not verify_signature(SIGNING_SECRET, ts, bytes(tampered), sig)
        assert not verify_signature("another-secret", ts, r.body, sig)

    by_event = {r.json()["event"]: r.json() for r in got}
    assert by_event["break_glass"]["break_glass"] is True
    assert by_event["break_glass"]["request_id"] == out["glass"].id
    assert by_event["grant.revoked"]["grant_id"] == out["revoked_grant"]
    assert by_event["grant.revoked"]["reason"] == "done early"
    assert by_event["grant.revoked"]["by"] == "admin"
    decided = {
        r.json()["request_id"]: r.json() for r in got if r.json()["event"] == "request.decided"
    }
    assert decided[out["pending"].id]["state"] == "active"


def test_verify_signature_rejects_stale_or_future_timestamps_and_garbage(
    receiver: Receiver, open_world: OpenWorld
) -> None:
    w = open_world(receiver.url, events=["request.created"])
    _ask(w, "app")
    _drain(w)
    [r] = receiver.delivered()
    ts, sig = r.headers["x-jitvault-timestamp"], r.headers["x-jitvault-signature"]
    sent = int(ts)
    assert verify_signature(SIGNING_SECRET, ts, r.body, sig, now=sent + 299)
    assert not verify_signature(SIGNING_SECRET, ts, r.body, sig, now=sent + 301)
    assert not verify_signature(SIGNING_SECRET, ts, r.body, sig, now=sent - 301)
    assert verify_signature(SIGNING_SECRET, ts, r.body, f"v1=00, {sig}", now=sent)
    assert not verify_signature(SIGNING_SECRET, "not-a-number", r.body, sig)
    assert not verify_signature(SIGNING_SECRET, ts, r.body, "v1=" + "0" * 64, now=sent)
    # the timestamp is signed too: moving it invalidates the signature
    assert not verify_signature(SIGNING_SECRET, str(sent + 1), r.body, sig, now=sent)


def test_unsigned_when_no_secret_is_configured(receiver: Receiver, open_world: OpenWorld) -> None:
    w = open_world(receiver.url, events=["request.created"])
    w.node.settings.notifiers[0].secret_env = None
    _ask(w, "app")
    _drain(w)
    [r] = receiver.delivered()
    assert "x-jitvault-signature" not in r.headers
    assert "x-jitvault-timestamp" not in r.headers
    assert r.headers["x-jitvault-event"] == "request.created"


# --- (b) slack format ----------------------------------------------------------------------------


def test_slack_format_posts_a_readable_text_line_and_blocks(
    receiver: Receiver, open_world: OpenWorld
) -> None:
    w = open_world(receiver.url, events=["break_glass"], format="slack")
    _ask(w, "ops", break_glass=True, reason="INC-7 <!channel> db down & on fire")
    _drain(w)
    [r] = receiver.delivered()
    assert verify_signature(
        SIGNING_SECRET, r.headers["x-jitvault-timestamp"], r.body, r.headers["x-jitvault-signature"]
    )
    payload = r.json()
    text = payload["text"]
    assert "\n" not in text
    # who, what, target, state, reason (the core sends the request's state as of the event)
    for part in ("alice", "BREAK-GLASS", "account ops", "db1", "state: ", "INC-7"):
        assert part in text, part
    # user text cannot inject Slack mentions or links
    assert "<!channel>" not in text
    assert "&lt;!channel&gt;" in text
    assert [b["type"] for b in payload["blocks"]] == ["section", "context"]
    assert payload["blocks"][0]["text"]["text"] == text
    context = payload["blocks"][1]["elements"][0]["text"]
    assert "break_glass" in context
    assert "request_id" in context


def test_a_queued_grant_that_lapses_tells_its_requester_why(
    receiver: Receiver, open_world: OpenWorld
) -> None:
    """grant.lapsed: a grant queued for a checked-out account whose window ended first."""
    w = open_world(receiver.url, events=["grant.lapsed"], format="slack")
    policies.apply_policy(
        w.node, w.admin, POLICY.replace("    max_duration: 8h\n", "    checkout: queue\n")
    )
    u = users.add_user(w.node, w.admin, "carol", Role.REQUESTER)
    carol = Principal(u.id, u.name, u.role, tuple(u.groups))
    start = w.clock() + timedelta(hours=3)
    holder = requests.create_request(
        w.node,
        w.alice,
        NewRequest("db1", AccessKind.ACCOUNT, "app", timedelta(hours=1), "INC-5", start),
    )
    queued = requests.create_request(
        w.node, carol, NewRequest("db1", AccessKind.ACCOUNT, "app", timedelta(hours=1), "INC-6")
    )
    grant_id = grant_id_of(w.node, queued)
    assert grants.sweep(w.node, at=w.clock() + timedelta(minutes=59)).lapsed == 0
    _drain(w)
    assert receiver.delivered() == []
    w.clock.advance(3601)
    assert grants.sweep(w.node).lapsed == 1
    _drain(w)
    [r] = receiver.delivered()
    assert r.headers["x-jitvault-event"] == "grant.lapsed"
    text = r.json()["text"]
    holder_id = grant_id_of(w.node, holder)
    for part in (
        f"grant #{grant_id} of carol for account app on db1 lapsed unused",
        "state: expired",
        f"while db1/app was checked out by grant {holder_id}",
    ):
        assert part in text, (part, text)


# --- (c) retries and dead jobs -------------------------------------------------------------------


def test_receiver_failing_three_times_gets_the_event_on_the_fourth_attempt(
    receiver: Receiver, open_world: OpenWorld
) -> None:
    receiver.fail_first = 3
    w = open_world(receiver.url, events=["request.created"])
    w.node.settings.workflow.job_backoff_base = 60.0  # a retry is never due "by accident"
    _ask(w, "app")

    assert jobs.run_due_jobs(w.node) == 1
    [job] = _notify_jobs(w)
    assert (job.state, job.attempts) == ("queued", 1)
    assert "HTTP 500" in job.last_error
    assert jobs.run_due_jobs(w.node) == 0, "the retry waits for its backoff"

    _retry_until_settled(w)
    [job] = _notify_jobs(w)
    assert (job.state, job.attempts) == ("done", 4)
    assert receiver.attempts() == 4
    [ok] = receiver.delivered()
    assert ok.json()["event"] == "request.created"
    # every attempt was the same event, each freshly signed
    bodies = {r.body for r in receiver.seen}
    assert len(bodies) == 1
    assert verify_signature(
        SIGNING_SECRET,
        ok.headers["x-jitvault-timestamp"],
        ok.body,
        ok.headers["x-jitvault-signature"],
    )


def test_receiver_that_always_fails_ends_dead_after_max_attempts_and_is_audited(
    receiver: Receiver, open_world: OpenWorld
) -> None:
    receiver.always_fail = True
    w = open_world(receiver.url, events=["request.created"])
    request = _ask(w, "app")
    assert request.state == RequestState.ACTIVE

    _retry_until_settled(w)
    [job] = _notify_jobs(w)
    assert job.state == "dead"
    assert job.attempts == job.max_attempts == 8
    assert receiver.attempts() == 8
    assert "HTTP 500" in job.last_error
    assert ERROR_BODY not in job.last_error
    assert SIGNING_SECRET not in job.last_error
    assert "path-secret" not in job.last_error

    with w.node.read() as conn:
        dead = [e for e in list_events(conn) if e["action"] == "job.dead"]
    assert len(dead) == 1
    assert dead[0]["subject"] == f"job:{job.id}"
    assert dead[0]["details"]["kind"] == "notify"
    assert dead[0]["details"]["attempts"] == 8
    assert ERROR_BODY not in json.dumps(dead[0])


def test_redirects_are_not_followed_and_count_as_failures(
    receiver: Receiver, open_world: OpenWorld
) -> None:
    receiver.redirect = True
    w = open_world(receiver.url, events=["request.created"])
    _ask(w, "app")
    assert jobs.run_due_jobs(w.node) == 1
    [job] = _notify_jobs(w)
    assert job.state == "queued"
    assert "HTTP 302" in job.last_error
    assert [r.path for r in receiver.seen] == ["/hooks/jitvault?token=path-secret"]


# --- (d) a failing webhook never blocks the workflow ---------------------------------------------


def test_workflow_succeeds_while_the_receiver_port_is_closed_and_delivery_is_retried(
    open_world: OpenWorld,
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/hook"
    w = open_world(closed)
    request = _ask(w, "app")
    assert request.state == RequestState.ACTIVE
    grant_id = grant_id_of(w.node, request)
    revoked = grants.revoke_grant(w.node, w.admin, grant_id, "done")
    assert revoked.ended_at is not None

    assert jobs.run_due_jobs(w.node) >= 4  # and the grant's cleanup
    notify_jobs = _notify_jobs(w)
    assert len(notify_jobs) == 4
    for job in notify_jobs:
        assert (job.state, job.attempts) == ("queued", 1)
        assert "ConnectError" in job.last_error
        assert "/hook" not in job.last_error


def test_workflow_succeeds_while_the_receiver_hangs_and_delivery_times_out(
    receiver: Receiver, open_world: OpenWorld
) -> None:
    receiver.hang = True
    w = open_world(receiver.url, events=["request.created"], timeout=0.5)
    request = _ask(w, "app")
    assert request.state == RequestState.ACTIVE
    approval = _ask(w, "prod")
    assert requests.approve(w.node, w.bob, approval.id).state == RequestState.ACTIVE

    assert jobs.run_due_jobs(w.node) == 2
    for job in _notify_jobs(w):
        assert (job.state, job.attempts) == ("queued", 1)
        assert "did not answer within 0.5s" in job.last_error
    assert receiver.attempts() == 2
    assert receiver.delivered() == []


# --- (e) no secret in any event ------------------------------------------------------------------


def test_delivered_events_never_carry_the_vaulted_password_or_signing_secret(
    receiver: Receiver, open_world: OpenWorld
) -> None:
    w = open_world(receiver.url)
    _full_workflow(w)
    _drain(w)
    got = receiver.delivered()
    assert len(got) == 13
    for r in got:
        assert CANARY.encode() not in r.body
        assert SIGNING_SECRET.encode() not in r.body
        for value in r.headers.values():
            assert CANARY not in value
            assert SIGNING_SECRET not in value
    with w.node.read() as conn:
        stored = [j.payload for j in workflow.job_list(conn)]
    assert stored
    assert all(CANARY not in p and SIGNING_SECRET not in p for p in stored)


# --- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"url": "ftp://127.0.0.1/hook"},
        {"url": "file:///etc/passwd"},
        {"url": "http://"},
        {"url": "127.0.0.1:8080/hook"},
        {"url": "http://127.0.0.1/ho ok"},
        {"url": "http://127.0.0.1/hook", "format": "xml"},
        {"url": "http://127.0.0.1/hook", "timeout": 0},
        {"url": "http://127.0.0.1/hook", "timeout": 120},
        {"url": "http://127.0.0.1/hook", "headers": {"X-Jitvault-Signature": "v1=forged"}},
        {"url": "http://127.0.0.1/hook", "headers": {"Bad Name": "x"}},
        {"url": "http://127.0.0.1/hook", "headers": {"X-Ok": "a\r\nInjected: 1"}},
        {"url": "http://127.0.0.1/hook", "surprise": True},
    ],
)
def test_invalid_webhook_options_are_rejected(options: dict[str, Any]) -> None:
    with pytest.raises(PydanticValidationError):
        WebhookNotifier().parse_options(options)


def test_valid_webhook_options_are_normalized_with_defaults() -> None:
    clean = WebhookNotifier().parse_options(
        {"url": "https://hooks.example.com/x", "headers": {"Authorization": "Bearer t"}}
    )
    assert clean == {
        "url": "https://hooks.example.com/x",
        "format": "json",
        "timeout": 10.0,
        "headers": {"Authorization": "Bearer t"},
    }
    assert WebhookOptions.model_validate(clean).format == "json"


def test_extra_headers_are_sent_and_a_500_error_names_only_the_status(
    receiver: Receiver,
) -> None:
    receiver.fail_first = 1
    plugin = WebhookNotifier()
    options = plugin.parse_options({"url": receiver.url, "headers": {"Authorization": "Bearer t"}})
    event = {"event": "request.created", "requester": "alice", "target": "db1"}
    with pytest.raises(WebhookError) as failed:
        asyncio.run(plugin.deliver(options, event, Sensitive(SIGNING_SECRET)))
    message = str(failed.value)
    assert "HTTP 500" in message
    assert ERROR_BODY not in message
    assert SIGNING_SECRET not in message
    assert "path-secret" not in message
    asyncio.run(plugin.deliver(options, event, Sensitive(SIGNING_SECRET)))
    [ok] = receiver.delivered()
    assert ok.headers["authorization"] == "Bearer t"
    assert json.loads(ok.body) == event
    assert verify_signature(
        SIGNING_SECRET,
        ok.headers["x-jitvault-timestamp"],
        ok.body,
        ok.headers["x-jitvault-signature"],
    )

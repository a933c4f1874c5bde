"""Webhook notifier plugin: signed JSON webhooks, with a Slack-compatible payload option.

Configuration (one entry of ``[[notifiers]]``)::

    [[notifiers]]
    name = "hook"
    kind = "webhook"
    events = ["*"]
    secret_env = "JV_HOOK_SECRET"        # or secret_file = "/etc/jitvault/hook.secret"
    options = { url = "https://hooks.example.com/jitvault", format = "json", timeout = 10 }

Options:

- ``url``: where to POST; ``http`` or ``https`` only, with a host.
- ``format``: ``json`` (the body is the event itself) or ``slack`` (``{"text", "blocks"}``, what a
  Slack incoming webhook accepts).
- ``timeout``: seconds for the whole delivery (default 10, at most 15: the core abandons any
  delivery after 15 seconds).
- ``headers``: extra request headers (e.g. an ``Authorization`` the receiver wants). They cannot
  replace the headers below.

Every request carries ``Content-Type: application/json``, ``User-Agent: jitvault/<version>`` and
``X-Jitvault-Event: <event name>``. Redirects are not followed. A status outside 2xx, a timeout
or a transport error raises :class:`WebhookError`; the core retries the delivery with backoff.
Error messages name the host and the status code only: never the URL's path or query (a Slack
webhook URL is itself a secret), the signing secret, or the response body.

Signature scheme (v1)
---------------------

When the notifier has a signing secret, two more headers are sent::

    X-Jitvault-Timestamp: <unix time in seconds, decimal>
    X-Jitvault-Signature: v1=<hex HMAC-SHA256(key=secret, msg=f"{timestamp}.{raw body}")>

The secret is the UTF-8 bytes of the configured value; the message is the timestamp header's
ASCII value, a ``.``, and the request body exactly as received (bytes, before any JSON parsing).
A receiver recomputes the HMAC, compares it in constant time, and rejects timestamps more than
five minutes from its own clock (replays). :func:`verify_signature` does all of that::

    from jitvault_webhook import verify_signature

    ok = verify_signature(
        secret,
        request.headers["X-Jitvault-Timestamp"],
        raw_body,
        request.headers["X-Jitvault-Signature"],
    )

The signature header may list several comma-separated ``v1=`` values (one per secret during a
rotation); a receiver accepts the request when any of them matches.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from jitvault.domain import Sensitive
from jitvault.errors import Unavailable
from jitvault.plugin_api import NotifierPlugin

SIGNATURE_VERSION = "v1"
HEADER_TIMESTAMP = "X-Jitvault-Timestamp"
HEADER_SIGNATURE = "X-Jitvault-Signature"
HEADER_EVENT = "X-Jitvault-Event"
DEFAULT_TOLERANCE = 300
MAX_TIMEOUT = 15.0

try:
    _VERSION = _dist_version("jitvault")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    _VERSION = "0"
USER_AGENT = f"jitvault/{_VERSION}"

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: headers the plugin sets itself; configuration cannot override them
_RESERVED = {
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "host",
    "connection",
    "user-agent",
}


class WebhookError(Unavailable):
    """A delivery failed (status, timeout, transport). Retried by the core with backoff."""

    code = "webhook"


class WebhookOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    format: Literal["json", "slack"] = "json"
    timeout: float = Field(default=10.0, gt=0, le=MAX_TIMEOUT)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip()
        if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in v):
            raise ValueError("the webhook url must not contain spaces or control characters")
        try:
            url = httpx.URL(v)
        except (httpx.InvalidURL, ValueError):
            raise ValueError("the webhook url is not a valid URL") from None
        if url.scheme not in ("http", "https"):
            raise ValueError("the webhook url must start with http:// or https://")
        if not url.host:
            raise ValueError("the webhook url needs a host")
        if url.fragment:
            raise ValueError("the webhook url must not have a #fragment")
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"invalid header name {name!r}")
            low = name.lower()
            if low in _RESERVED or low.startswith("x-jitvault-"):
                raise ValueError(f"header {name!r} is set by jitvault and cannot be configured")
            if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
                raise ValueError(f"the value of header {name!r} contains control characters")
        return v


# --- signing -------------------------------------------------------------------------------------


def _key(secret: str | bytes | Sensitive[str]) -> bytes:
    if isinstance(secret, Sensitive):
        secret = secret.reveal()
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: str | bytes | Sensitive[str], timestamp: str | int, body: bytes) -> str:
    """The ``X-Jitvault-Signature`` value for ``body`` sent at ``timestamp``: ``v1=<hex>``."""
    mac = hmac.new(_key(secret), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={mac.hexdigest()}"


def verify_signature(
    secret: str | bytes | Sensitive[str],
    timestamp: str | int,
    body: bytes,
    signature: str,
    tolerance: int = DEFAULT_TOLERANCE,
    *,
    now: float | None = None,
) -> bool:
    """True when ``signature`` (the ``X-Jitvault-Signature`` header) signs ``body`` with
    ``secret`` at ``timestamp`` (the ``X-Jitvault-Timestamp`` header), and that timestamp is
    within ``tolerance`` seconds of ``now`` (default: this machine's clock). Constant-time."""
    try:
        ts = int(str(timestamp).strip())
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        return False
    expected = sign(secret, ts, body).encode()
    ok = False
    for candidate in signature.split(","):
        # no early exit: every candidate is compared
        ok |= hmac.compare_digest(candidate.strip().encode(), expected)
    return ok


# --- payloads ------------------------------------------------------------------------------------


def _body(event: dict[str, Any], fmt: str) -> bytes:
    payload = slack_payload(event) if fmt == "slack" else event
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _escape(text: object, limit: int = 300) -> str:
    """Slack mrkdwn: escape &, <, > (no injected links or @channel mentions); one line."""
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def summary_line(event: dict[str, Any]) -> str:
    """One readable line: who, what, target, state, reason."""
    name = str(event.get("event", "event"))
    who = _escape(event.get("requester") or event.get("by") or "someone")
    what = f"{_escape(event.get('kind', 'access'))} {_escape(event.get('name', '?'))}"
    target = _escape(event.get("target", "?"))
    state = _escape(event.get("state", "?"))
    reason = _escape(event.get("reason", "")) or "-"
    subject = f"{what} on {target}"
    rid = event.get("request_id")
    gid = event.get("grant_id")
    if name == "request.created":
        lead = f"{who} requested {subject}"
    elif name == "request.decided":
        lead = f"request #{rid} by {who} for {subject} was decided"
    elif name == "grant.created":
        lead = f"{who} was granted {subject} (grant #{gid})"
    elif name == "grant.expiring":
        lead = f"grant #{gid} of {who} for {subject} expires at {_escape(event.get('expires_at'))}"
    elif name == "grant.revoked":
        lead = f"grant #{gid} of {who} for {subject} was revoked by {_escape(event.get('by'))}"
    elif name == "grant.lapsed":
        lead = f"grant #{gid} of {who} for {subject} lapsed unused, still queued for its account"
    elif name == "break_glass":
        lead = f":rotating_light: BREAK-GLASS: {who} took {subject}"
    else:
        lead = f"{_escape(name)}: {who}, {subject}"
    return f"[jitvault] {lead} | state: {state} | reason: {reason}"


def slack_payload(event: dict[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook payload: ``text`` (the fallback line) and ``blocks``."""
    line = summary_line(event)
    context = [f"event: {_escape(event.get('event', '?'))}"]
    for key in ("request_id", "grant_id", "rule", "duration_seconds", "expires_at", "at"):
        if event.get(key) is not None:
            context.append(f"{key}: {_escape(event[key], 100)}")
    if event.get("break_glass"):
        context.append("break-glass: review required")
    return {
        "text": line,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": line}},
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": " · ".join(context)}],
            },
        ],
    }


# --- the plugin ----------------------------------------------------------------------------------


def _where(url: httpx.URL) -> str:
    """Host and port only: the path or query of a webhook URL may itself be a secret."""
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}"


class WebhookNotifier(NotifierPlugin):
    kind = "webhook"
    config_model = WebhookOptions

    async def deliver(
        self,
        options: dict[str, Any],
        event: dict[str, Any],
        signing_secret: Sensitive[str] | None,
    ) -> None:
        opts = WebhookOptions.model_validate(options)
        url = httpx.URL(opts.url)
        body = _body(event, opts.format)
        headers = {
            **opts.headers,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            HEADER_EVENT: str(event.get("event", "")),
        }
        if signing_secret is not None:
            ts = str(int(time.time()))
            headers[HEADER_TIMESTAMP] = ts
            headers[HEADER_SIGNATURE] = sign(signing_secret, ts, body)
        where = _where(url)
        try:
            async with asyncio.timeout(opts.timeout):
                async with httpx.AsyncClient(
                    timeout=opts.timeout, follow_redirects=False
                ) as client:
                    resp = await client.post(url, content=body, headers=headers)
        except (TimeoutError, httpx.TimeoutException):
            raise WebhookError(f"webhook {where} did not answer within {opts.timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise WebhookError(f"webhook {where} failed: {type(exc).__name__}") from None
        if not 200 <= resp.status_code < 300:
            hint = "redirects are not followed" if 300 <= resp.status_code < 400 else None
            raise WebhookError(f"webhook {where} answered HTTP {resp.status_code}", hint=hint)


__all__ = [
    "HEADER_EVENT",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "USER_AGENT",
    "WebhookError",
    "WebhookNotifier",
    "WebhookOptions",
    "sign",
    "slack_payload",
    "summary_line",
    "verify_signature",
]

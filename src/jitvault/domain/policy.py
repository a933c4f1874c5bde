"""Approval policy: a YAML document of rules, evaluated by one pure function.

Semantics (documented in the README with examples):

1. A rule applies when every criterion in its ``match`` holds (lists are "any of").
2. Deny wins: if any applying rule says ``deny``, the request is denied.
3. Otherwise the most specific applying rule decides (the one with the most ``match``
   criteria); on a tie, the stricter one (more approvals before fewer, approvals before
   auto-approve), then the one listed first.
4. The deciding rule's ``max_duration`` is a hard limit: a longer request is denied, not
   shortened. Break-glass is granted only where the deciding rule says ``break_glass: allowed``.
5. When no rule applies, the request is denied (deny by default).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jitvault.domain.durations import parse_duration
from jitvault.errors import ValidationError

DEFAULT_REQUEST_TTL = timedelta(hours=1)
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _duration(value: Any) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, int):
        return timedelta(seconds=value)
    try:
        return parse_duration(str(value))
    except ValidationError as exc:
        # a ValueError, so that pydantic reports it with its place (and parse_policy the rule)
        raise ValueError(str(exc)) from None


class AccessKind(StrEnum):
    """What is asked for: a shared account, a role elevation, or an ephemeral account."""

    ACCOUNT = "account"
    ROLE = "role"
    EPHEMERAL = "ephemeral"


class Match(BaseModel):
    """Criteria a request must meet for a rule to apply. Unset criteria match anything."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    users: list[str] | None = None
    groups: list[str] | None = None
    targets: list[str] | None = None
    target_labels: dict[str, str] | None = None
    accounts: list[str] | None = None
    roles: list[str] | None = None
    templates: list[str] | None = None
    #: applies only to requests at most this long
    duration_at_most: timedelta | None = None
    #: "HH:MM-HH:MM" in ``timezone`` (may wrap midnight)
    hours: str | None = None
    days: list[str] | None = None
    timezone: str = "UTC"
    #: a regular expression the reason must contain (use ^...$ to anchor)
    reason: str | None = None

    _validate_duration = field_validator("duration_at_most", mode="before")(_duration)

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: str | None) -> str | None:
        if v is not None:
            _parse_hours(v)
        return v

    @field_validator("days")
    @classmethod
    def _days(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            full = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
            bad = [d for d in v if d.lower() not in _DAYS and d.lower() not in full]
            if bad:
                raise ValueError(f"unknown day(s) {bad}; use mon..sun")
            v = [d.lower()[:3] for d in v]
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {v!r}") from None
        return v

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid reason pattern: {exc}") from None
        return v

    def criteria(self) -> int:
        """How specific this match is: the number of criteria given."""
        fields = self.model_dump(exclude_none=True, exclude={"timezone"})
        return len(fields)


def _parse_hours(text: str) -> tuple[time, time]:
    try:
        start, end = text.split("-")
        window = time.fromisoformat(start.strip()), time.fromisoformat(end.strip())
    except ValueError:
        raise ValueError(f"invalid hours {text!r}; use HH:MM-HH:MM") from None
    if window[0] == window[1]:
        raise ValueError(f"hours {text!r} is an empty window")
    return window


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100)
    match: Match = Field(default_factory=Match)
    auto_approve: bool = False
    require_approvals: int | None = Field(default=None, ge=1, le=20)
    approvers: list[str] = Field(default_factory=list)
    deny: bool = False
    max_duration: timedelta | None = None
    request_ttl: timedelta = DEFAULT_REQUEST_TTL
    break_glass: Literal["allowed", "denied"] = "denied"
    max_connections: int | None = Field(default=None, ge=1, le=10_000)
    #: a shared account is held by one live grant at a time; a request for an account that is
    #: checked out is refused, or (queue) waits approved until the account is checked in
    checkout: Literal["refuse", "queue"] = "refuse"
    #: may sessions of the grants this rule approves forward ports (SSH ``-L``)? Default: no
    allow_forwarding: bool = False

    _validate_durations = field_validator("max_duration", "request_ttl", mode="before")(_duration)

    @model_validator(mode="after")
    def _one_outcome(self) -> Rule:
        outcomes = [self.auto_approve, self.require_approvals is not None, self.deny]
        if sum(outcomes) != 1:
            raise ValueError(
                f"rule {self.name!r}: give exactly one of auto_approve, require_approvals, deny"
            )
        if self.require_approvals is not None and not self.approvers:
            raise ValueError(f"rule {self.name!r}: require_approvals needs approvers (groups)")
        return self


class PolicyDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> PolicyDocument:
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(dupes)}")
        return self


@dataclass(frozen=True)
class RequestFacts:
    """Everything a policy may look at, gathered before evaluation."""

    requester: str
    groups: tuple[str, ...]
    target: str
    kind: AccessKind
    name: str
    duration: timedelta
    reason: str
    at: datetime
    target_labels: dict[str, str] = field(default_factory=dict)
    break_glass: bool = False


class Outcome(StrEnum):
    AUTO_APPROVE = "auto_approve"
    REQUIRE_APPROVALS = "require_approvals"
    DENY = "deny"


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    rule: str | None
    explanation: str
    required_approvals: int = 0
    approver_groups: tuple[str, ...] = ()
    max_duration: timedelta | None = None
    max_connections: int | None = None
    request_ttl: timedelta = DEFAULT_REQUEST_TTL
    break_glass: bool = False
    checkout: str = "refuse"

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "rule": self.rule,
            "explanation": self.explanation,
            "required_approvals": self.required_approvals,
            "approver_groups": list(self.approver_groups),
            "max_duration_seconds": int(self.max_duration.total_seconds())
            if self.max_duration
            else None,
            "max_connections": self.max_connections,
            "request_ttl_seconds": int(self.request_ttl.total_seconds()),
            "break_glass": self.break_glass,
            "checkout": self.checkout,
        }


def _in_hours(spec: str, at: datetime, tz: str) -> bool:
    start, end = _parse_hours(spec)
    now = at.astimezone(ZoneInfo(tz)).time()
    if start <= end:
        return start <= now < end
    return now >= start or now < end  # wraps midnight


def applies(m: Match, f: RequestFacts) -> bool:
    """Does every criterion of ``m`` hold for the request?"""
    checks = [
        m.users is None or f.requester in m.users,
        m.groups is None or bool(set(m.groups) & set(f.groups)),
        m.targets is None or f.target in m.targets,
        m.target_labels is None
        or all(f.target_labels.get(k) == v for k, v in m.target_labels.items()),
        m.accounts is None or (f.kind == AccessKind.ACCOUNT and f.name in m.accounts),
        m.roles is None or (f.kind == AccessKind.ROLE and f.name in m.roles),
        m.templates is None or (f.kind == AccessKind.EPHEMERAL and f.name in m.templates),
        m.duration_at_most is None or f.duration <= m.duration_at_most,
        m.hours is None or _in_hours(m.hours, f.at, m.timezone),
        m.days is None or _DAYS[f.at.astimezone(ZoneInfo(m.timezone)).weekday()] in m.days,
        m.reason is None or re.search(m.reason, f.reason) is not None,
    ]
    return all(checks)


def _strictness(r: Rule) -> int:
    if r.deny:
        return 1000
    if r.require_approvals is not None:
        return r.require_approvals
    return 0


def _fmt(d: timedelta) -> str:
    s = int(d.total_seconds())
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (sec, "s")) if v) or "0s"


def evaluate(policy: PolicyDocument, f: RequestFacts) -> Decision:
    """Decide a request. Pure: the same document and facts always give the same decision."""
    if f.duration <= timedelta(0):
        return Decision(Outcome.DENY, None, "the requested duration must be positive")
    applying = [(i, r) for i, r in enumerate(policy.rules) if applies(r.match, f)]
    if not applying:
        return Decision(Outcome.DENY, None, "no rule matches this request (deny by default)")
    denies = [(i, r) for i, r in applying if r.deny]
    pool = denies or applying
    _, rule = max(pool, key=lambda ir: (ir[1].match.criteria(), _strictness(ir[1]), -ir[0]))
    common: dict[str, Any] = {
        "max_duration": rule.max_duration,
        "max_connections": rule.max_connections,
        "request_ttl": rule.request_ttl,
        "checkout": rule.checkout,
    }
    if rule.deny:
        return Decision(Outcome.DENY, rule.name, f"denied by rule {rule.name!r}", **common)
    if rule.max_duration is not None and f.duration > rule.max_duration:
        return Decision(
            Outcome.DENY,
            rule.name,
            f"requested {_fmt(f.duration)} exceeds max_duration {_fmt(rule.max_duration)} "
            f"of rule {rule.name!r}",
            **common,
        )
    if f.break_glass:
        if rule.break_glass != "allowed":
            return Decision(
                Outcome.DENY, rule.name, f"rule {rule.name!r} does not allow break-glass", **common
            )
        return Decision(
            Outcome.AUTO_APPROVE,
            rule.name,
            f"break-glass allowed by rule {rule.name!r}; flagged for review",
            break_glass=True,
            **common,
        )
    if rule.auto_approve:
        return Decision(
            Outcome.AUTO_APPROVE, rule.name, f"auto-approved by rule {rule.name!r}", **common
        )
    n = rule.require_approvals or 1
    return Decision(
        Outcome.REQUIRE_APPROVALS,
        rule.name,
        f"needs {n} approval(s) from {', '.join(rule.approvers)} (rule {rule.name!r})",
        required_approvals=n,
        approver_groups=tuple(rule.approvers),
        **common,
    )


__all__ = [
    "DEFAULT_REQUEST_TTL",
    "AccessKind",
    "Decision",
    "Match",
    "Outcome",
    "PolicyDocument",
    "RequestFacts",
    "Rule",
    "applies",
    "evaluate",
]

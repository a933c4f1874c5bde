"""Policy evaluation: properties of the pure ``evaluate`` over generated policies and requests,
examples of each kind of criterion, and the validation of policy documents."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitvault.domain import (
    AccessKind,
    Outcome,
    PolicyDocument,
    RequestFacts,
)
from jitvault.domain.policy import Rule, applies, evaluate
from jitvault.errors import ValidationError
from jitvault.services.policies import parse_policy

USERS = ("alice", "bob", "carol")
GROUPS = ("dev", "dba", "oncall")
TARGETS = ("pg-prod", "pg-dev")
NAMES = ("app_owner", "readonly", "analyst")
REASONS = ("INC-1234 fix replication", "routine check", "hotfix INC-9", "INC-x")
PATTERNS = ("^INC-[0-9]+", "hotfix", "^routine$")
HOURS = ("09:00-18:00", "22:00-06:00", "00:00-23:59")
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo")
DURATIONS = ("15m", "30m", "1h", "2h", "8h")

# --- strategies ---------------------------------------------------------------------------------


def _subset(items: tuple[str, ...]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(items), min_size=1, max_size=len(items), unique=True)


# built once: building strategies inside a composite on every draw is what makes them slow
MATCHES = st.fixed_dictionaries(
    {},
    optional={
        "users": _subset(USERS),
        "groups": _subset(GROUPS),
        "targets": _subset(TARGETS),
        "target_labels": st.fixed_dictionaries({"env": st.sampled_from(("prod", "dev"))}),
        "accounts": _subset(NAMES),
        "roles": _subset(NAMES),
        "templates": _subset(NAMES),
        "duration_at_most": st.sampled_from(DURATIONS),
        "hours": st.sampled_from(HOURS),
        "days": _subset(("mon", "tue", "wed", "thu", "fri", "sat", "sun")),
        "reason": st.sampled_from(PATTERNS),
        "timezone": st.sampled_from(ZONES),
    },
)
OUTCOMES = st.one_of(
    st.just({"auto_approve": True}),
    st.fixed_dictionaries({"require_approvals": st.integers(1, 4), "approvers": _subset(GROUPS)}),
    st.just({"deny": True}),
)
LIMITS = st.fixed_dictionaries(
    {},
    optional={
        "max_duration": st.sampled_from(DURATIONS),
        "break_glass": st.sampled_from(("allowed", "denied")),
    },
)
RULE_BODIES = st.tuples(MATCHES, OUTCOMES, LIMITS)


@st.composite
def policies(draw: st.DrawFn, min_rules: int = 0) -> PolicyDocument:
    bodies = draw(st.lists(RULE_BODIES, min_size=min_rules, max_size=6))
    return PolicyDocument.model_validate(
        {
            "rules": [
                {"name": f"rule-{i}", "match": m, **outcome, **limits}
                for i, (m, outcome, limits) in enumerate(bodies)
            ]
        }
    )


@st.composite
def facts(draw: st.DrawFn) -> RequestFacts:
    labels = draw(st.sampled_from(({}, {"env": "prod"}, {"env": "dev"})))
    return RequestFacts(
        requester=draw(st.sampled_from(USERS)),
        groups=tuple(draw(st.lists(st.sampled_from(GROUPS), max_size=3, unique=True))),
        target=draw(st.sampled_from(TARGETS)),
        kind=draw(st.sampled_from(tuple(AccessKind))),
        name=draw(st.sampled_from(NAMES)),
        duration=timedelta(minutes=draw(st.integers(1, 600))),
        reason=draw(st.sampled_from(REASONS)),
        at=draw(
            st.datetimes(
                min_value=datetime(2025, 1, 1),
                max_value=datetime(2028, 12, 31),
                timezones=st.just(UTC),
            )
        ),
        target_labels=labels,
        break_glass=draw(st.booleans()),
    )


def _rule(policy: PolicyDocument, name: str | None) -> Rule:
    assert name is not None
    (rule,) = [r for r in policy.rules if r.name == name]
    return rule


def _applying(policy: PolicyDocument, f: RequestFacts) -> list[Rule]:
    return [r for r in policy.rules if applies(r.match, f)]


PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- properties ---------------------------------------------------------------------------------


@PROPS
@given(facts())
def test_an_empty_policy_denies_every_request(f: RequestFacts) -> None:
    d = evaluate(PolicyDocument(), f)
    assert d.outcome == Outcome.DENY
    assert d.rule is None
    assert not d.break_glass


@PROPS
@given(policies(), facts())
def test_a_request_no_rule_matches_is_denied_by_default(
    policy: PolicyDocument, f: RequestFacts
) -> None:
    # a requester no rule names: restrict every rule to named users, then ask as someone else
    restricted = PolicyDocument.model_validate(
        {
            "rules": [
                {**r.model_dump(), "match": {**r.match.model_dump(), "users": list(USERS)}}
                for r in policy.rules
            ]
        }
    )
    stranger = RequestFacts(**{**f.__dict__, "requester": "mallory"})
    d = evaluate(restricted, stranger)
    assert d.outcome == Outcome.DENY
    assert d.rule is None
    assert "deny by default" in d.explanation


@PROPS
@given(policies(), facts())
def test_only_an_applying_rule_decides_and_none_applying_means_deny(
    policy: PolicyDocument, f: RequestFacts
) -> None:
    d = evaluate(policy, f)
    if not _applying(policy, f):
        assert (d.outcome, d.rule) == (Outcome.DENY, None)
    else:
        assert applies(_rule(policy, d.rule).match, f)


@PROPS
@given(policies(), facts())
def test_an_allowed_request_never_exceeds_the_deciding_rules_max_duration(
    policy: PolicyDocument, f: RequestFacts
) -> None:
    d = evaluate(policy, f)
    if d.outcome == Outcome.DENY:
        return
    rule = _rule(policy, d.rule)
    assert d.max_duration == rule.max_duration
    assert rule.max_duration is None or f.duration <= rule.max_duration


@PROPS
@given(policies(), facts())
def test_deny_wins_over_any_allowing_rule(policy: PolicyDocument, f: RequestFacts) -> None:
    d = evaluate(policy, f)
    if any(r.deny for r in _applying(policy, f)):
        assert d.outcome == Outcome.DENY
        assert _rule(policy, d.rule).deny


@PROPS
@given(policies(), facts())
def test_a_catch_all_deny_rule_denies_everything_whatever_else_is_listed(
    policy: PolicyDocument, f: RequestFacts
) -> None:
    fenced = PolicyDocument.model_validate(
        {"rules": [*(r.model_dump() for r in policy.rules), {"name": "fence", "deny": True}]}
    )
    d = evaluate(fenced, f)
    assert d.outcome == Outcome.DENY
    assert d.rule is not None
    assert _rule(fenced, d.rule).deny


@PROPS
@given(policies(), facts())
def test_break_glass_is_granted_only_when_the_deciding_rule_allows_it(
    policy: PolicyDocument, f: RequestFacts
) -> None:
    d = evaluate(policy, f)
    if d.break_glass:
        assert f.break_glass
        assert d.outcome == Outcome.AUTO_APPROVE
        assert _rule(policy, d.rule).break_glass == "allowed"
    if f.break_glass and d.outcome != Outcome.DENY:
        # a break-glass request is never routed to approvers nor granted without the flag
        assert d.break_glass
    if f.break_glass and d.rule is not None and _rule(policy, d.rule).break_glass != "allowed":
        assert d.outcome == Outcome.DENY
    if not f.break_glass:
        assert not d.break_glass


@PROPS
@given(policies(), facts())
def test_the_most_specific_applying_rule_decides_when_no_deny_applies(
    policy: PolicyDocument, f: RequestFacts
) -> None:
    applying = _applying(policy, f)
    if not applying or any(r.deny for r in applying):
        return
    d = evaluate(policy, f)
    assert _rule(policy, d.rule).match.criteria() == max(r.match.criteria() for r in applying)


@PROPS
@given(policies(), facts())
def test_the_same_facts_always_give_the_same_decision(
    policy: PolicyDocument, f: RequestFacts
) -> None:
    first = evaluate(policy, f)
    again = evaluate(policy, f)
    reparsed = evaluate(PolicyDocument.model_validate(policy.model_dump()), f)
    copied_facts = evaluate(policy, RequestFacts(**f.__dict__))
    assert first == again == reparsed == copied_facts


@PROPS
@given(policies(), facts())
def test_a_non_positive_duration_is_always_denied(policy: PolicyDocument, f: RequestFacts) -> None:
    for duration in (timedelta(0), timedelta(seconds=-1)):
        d = evaluate(policy, RequestFacts(**{**f.__dict__, "duration": duration}))
        assert d.outcome == Outcome.DENY


# --- examples -----------------------------------------------------------------------------------


def _facts(**kw: Any) -> RequestFacts:
    base: dict[str, Any] = {
        "requester": "alice",
        "groups": ("dev",),
        "target": "pg-prod",
        "kind": AccessKind.ACCOUNT,
        "name": "app_owner",
        "duration": timedelta(minutes=30),
        "reason": "INC-1234 fix replication slot",
        "at": datetime(2026, 1, 14, 12, 0, tzinfo=UTC),  # a Wednesday
    }
    base.update(kw)
    return RequestFacts(**base)


def _one(match: dict[str, Any], **rule: Any) -> PolicyDocument:
    return parse_policy_dict({"rules": [{"name": "only", "match": match, **rule}]})


def parse_policy_dict(data: dict[str, Any]) -> PolicyDocument:
    return PolicyDocument.model_validate(data)


def _outcome(policy: PolicyDocument, **kw: Any) -> Outcome:
    return evaluate(policy, _facts(**kw)).outcome


def test_office_hours_window_applies_inside_and_not_outside() -> None:
    p = _one({"hours": "09:00-18:00"}, auto_approve=True)
    assert _outcome(p, at=datetime(2026, 1, 14, 9, 0, tzinfo=UTC)) == Outcome.AUTO_APPROVE
    assert _outcome(p, at=datetime(2026, 1, 14, 17, 59, tzinfo=UTC)) == Outcome.AUTO_APPROVE
    assert _outcome(p, at=datetime(2026, 1, 14, 18, 0, tzinfo=UTC)) == Outcome.DENY
    assert _outcome(p, at=datetime(2026, 1, 14, 8, 59, tzinfo=UTC)) == Outcome.DENY


def test_a_window_wrapping_midnight_is_read_in_the_rules_timezone() -> None:
    # 22:00-06:00 in Berlin (UTC+1 in January)
    p = _one({"hours": "22:00-06:00", "timezone": "Europe/Berlin"}, auto_approve=True)
    inside = [
        datetime(2026, 1, 14, 21, 30, tzinfo=UTC),  # 22:30 Berlin, outside in UTC
        datetime(2026, 1, 14, 23, 59, tzinfo=UTC),  # 00:59 Berlin, next day
        datetime(2026, 1, 15, 4, 30, tzinfo=UTC),  # 05:30 Berlin
    ]
    outside = [
        datetime(2026, 1, 15, 5, 30, tzinfo=UTC),  # 06:30 Berlin, inside in UTC
        datetime(2026, 1, 14, 12, 0, tzinfo=UTC),
        datetime(2026, 1, 14, 20, 59, tzinfo=UTC),  # 21:59 Berlin
    ]
    for at in inside:
        assert _outcome(p, at=at) == Outcome.AUTO_APPROVE, at
    for at in outside:
        assert _outcome(p, at=at) == Outcome.DENY, at
    # the same instants through the UTC window give the opposite answer where they differ
    utc = _one({"hours": "22:00-06:00"}, auto_approve=True)
    assert _outcome(utc, at=inside[0]) == Outcome.DENY
    assert _outcome(utc, at=outside[0]) == Outcome.AUTO_APPROVE


def test_days_are_the_weekday_in_the_rules_timezone() -> None:
    weekend = _one({"days": ["sat", "sun"], "timezone": "Europe/Berlin"}, auto_approve=True)
    friday_late_utc = datetime(2026, 1, 16, 23, 30, tzinfo=UTC)  # Saturday 00:30 in Berlin
    assert _outcome(weekend, at=friday_late_utc) == Outcome.AUTO_APPROVE
    assert _outcome(weekend, at=datetime(2026, 1, 16, 12, 0, tzinfo=UTC)) == Outcome.DENY
    weekdays = _one({"days": ["Monday", "tue", "WED"]}, auto_approve=True)  # normalized
    assert _outcome(weekdays, at=datetime(2026, 1, 14, 12, 0, tzinfo=UTC)) == Outcome.AUTO_APPROVE
    assert _outcome(weekdays, at=datetime(2026, 1, 15, 12, 0, tzinfo=UTC)) == Outcome.DENY


def test_target_labels_must_all_match() -> None:
    p = _one({"target_labels": {"env": "prod", "tier": "db"}}, auto_approve=True)
    both = {"env": "prod", "tier": "db", "team": "x"}
    assert _outcome(p, target_labels=both) == Outcome.AUTO_APPROVE
    assert _outcome(p, target_labels={"env": "prod"}) == Outcome.DENY
    assert _outcome(p, target_labels={"env": "dev", "tier": "db"}) == Outcome.DENY
    assert _outcome(p, target_labels={}) == Outcome.DENY


@pytest.mark.parametrize(
    ("reason", "matches"),
    [
        ("INC-1234 fix replication slot", True),
        ("INC-7", True),
        ("fix INC-1234", False),  # anchored at the start
        ("INC-abc", False),
        ("inc-12", False),
        ("", False),
    ],
)
def test_a_reason_pattern_is_a_regular_expression(reason: str, matches: bool) -> None:
    p = _one({"reason": "^INC-[0-9]+"}, auto_approve=True)
    expected = Outcome.AUTO_APPROVE if matches else Outcome.DENY
    assert _outcome(p, reason=reason) == expected


def test_accounts_roles_and_templates_match_only_their_own_kind() -> None:
    p = _one({"accounts": ["app_owner"]}, auto_approve=True)
    assert _outcome(p, kind=AccessKind.ACCOUNT, name="app_owner") == Outcome.AUTO_APPROVE
    assert _outcome(p, kind=AccessKind.ROLE, name="app_owner") == Outcome.DENY
    assert _outcome(p, kind=AccessKind.EPHEMERAL, name="app_owner") == Outcome.DENY


def test_duration_at_most_and_max_duration_differ() -> None:
    # duration_at_most: a longer request is simply not covered by the rule (here: no rule -> deny)
    short = _one({"duration_at_most": "15m"}, auto_approve=True)
    assert _outcome(short, duration=timedelta(minutes=15)) == Outcome.AUTO_APPROVE
    assert _outcome(short, duration=timedelta(minutes=16)) == Outcome.DENY
    # max_duration: a longer request is denied by the rule, with the limit named, not shortened
    capped = _one({}, auto_approve=True, max_duration="1h")
    assert _outcome(capped, duration=timedelta(hours=1)) == Outcome.AUTO_APPROVE
    d = evaluate(capped, _facts(duration=timedelta(hours=2)))
    assert d.outcome == Outcome.DENY
    assert d.rule == "only"
    assert "exceeds max_duration 1h" in d.explanation


def test_the_most_specific_rule_wins_even_when_less_strict() -> None:
    p = parse_policy_dict(
        {
            "rules": [
                {
                    "name": "broad",
                    "match": {"targets": ["pg-prod"]},
                    "require_approvals": 3,
                    "approvers": ["dba"],
                },
                {
                    "name": "narrow",
                    "match": {"targets": ["pg-prod"], "groups": ["dev"]},
                    "auto_approve": True,
                },
            ]
        }
    )
    d = evaluate(p, _facts())
    assert (d.outcome, d.rule) == (Outcome.AUTO_APPROVE, "narrow")
    d = evaluate(p, _facts(groups=("oncall",)))
    assert (d.outcome, d.rule, d.required_approvals) == (Outcome.REQUIRE_APPROVALS, "broad", 3)


def test_on_a_tie_more_approvals_win_then_approvals_over_auto_then_the_first_listed() -> None:
    def rule(name: str, **outcome: Any) -> dict[str, Any]:
        return {"name": name, "match": {"targets": ["pg-prod"]}, **outcome}

    two = rule("two", require_approvals=2, approvers=["dba"])
    one = rule("one", require_approvals=1, approvers=["dba"])
    auto = rule("auto", auto_approve=True)
    for order in ([auto, one, two], [two, one, auto], [one, two, auto]):
        assert evaluate(parse_policy_dict({"rules": order}), _facts()).rule == "two"
    assert evaluate(parse_policy_dict({"rules": [auto, one]}), _facts()).rule == "one"
    one_b = rule("one-b", require_approvals=1, approvers=["dev"])
    assert evaluate(parse_policy_dict({"rules": [one_b, one]}), _facts()).rule == "one-b"
    assert evaluate(parse_policy_dict({"rules": [one, one_b]}), _facts()).rule == "one"


def test_a_deny_rule_beats_a_more_specific_allow() -> None:
    p = parse_policy_dict(
        {
            "rules": [
                {
                    "name": "specific-allow",
                    "match": {"targets": ["pg-prod"], "groups": ["dev"], "accounts": ["app_owner"]},
                    "auto_approve": True,
                },
                {"name": "weekend-freeze", "match": {"days": ["sat", "sun"]}, "deny": True},
            ]
        }
    )
    saturday = datetime(2026, 1, 17, 12, 0, tzinfo=UTC)
    d = evaluate(p, _facts(at=saturday))
    assert (d.outcome, d.rule) == (Outcome.DENY, "weekend-freeze")
    assert evaluate(p, _facts()).rule == "specific-allow"


def test_break_glass_examples() -> None:
    allowed = _one({}, require_approvals=2, approvers=["dba"], break_glass="allowed")
    d = evaluate(allowed, _facts(break_glass=True))
    assert (d.outcome, d.break_glass) == (Outcome.AUTO_APPROVE, True)
    assert "flagged for review" in d.explanation
    assert evaluate(allowed, _facts()).outcome == Outcome.REQUIRE_APPROVALS
    denied = _one({}, auto_approve=True)
    d = evaluate(denied, _facts(break_glass=True))
    assert (d.outcome, d.break_glass) == (Outcome.DENY, False)
    assert "does not allow break-glass" in d.explanation
    # break-glass does not lift the duration limit
    capped = _one({}, auto_approve=True, break_glass="allowed", max_duration="30m")
    assert _outcome(capped, break_glass=True, duration=timedelta(hours=1)) == Outcome.DENY


# --- invalid documents --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("rules:\n  - name: typo\n    auto_approve: true\n    aprovers: [dba]\n", "aprovers"),
        ("rules:\n  - name: m\n    auto_approve: true\n    match: {grups: [dev]}\n", "grups"),
        ("rules:\n  - name: both\n    auto_approve: true\n    deny: true\n", "exactly one"),
        ("rules:\n  - name: none\n    max_duration: 1h\n", "exactly one"),
        ("rules:\n  - name: lonely\n    require_approvals: 2\n", "needs approvers"),
        (
            "rules:\n  - name: regex\n    auto_approve: true\n    match: {reason: '^INC-[0-9'}\n",
            "reason pattern",
        ),
        ("rules:\n  - name: dur\n    auto_approve: true\n    max_duration: forever\n", "forever"),
        (
            "rules:\n  - name: dur2\n    deny: true\n    match: {duration_at_most: 1x}\n",
            "duration",
        ),
        ("rules:\n  - name: ttl\n    auto_approve: true\n    request_ttl: soon\n", "duration"),
        ("rules:\n  - name: hrs\n    auto_approve: true\n    match: {hours: '9-5'}\n", "hours"),
        ("rules:\n  - name: tz\n    auto_approve: true\n    match: {timezone: Mars/Base}\n", "tz"),
        ("rules:\n  - name: day\n    auto_approve: true\n    match: {days: [funday]}\n", "day"),
        ("rules:\n  - name: bg\n    auto_approve: true\n    break_glass: sometimes\n", "bg"),
    ],
)
def test_an_invalid_rule_is_rejected_with_a_message_naming_the_rule(
    document: str, expected: str
) -> None:
    name = document.split("name: ", 1)[1].split("\n", 1)[0]
    with pytest.raises(ValidationError) as err:
        parse_policy(document)
    message = str(err.value)
    assert message.startswith("invalid policy")
    assert f"rule {name!r}" in message
    assert expected in message


def test_duplicate_rule_names_are_rejected_naming_the_name() -> None:
    doc = "rules:\n  - name: twice\n    deny: true\n  - name: twice\n    auto_approve: true\n"
    with pytest.raises(ValidationError) as err:
        parse_policy(doc)
    assert "unique" in str(err.value)
    assert "twice" in str(err.value)


@pytest.mark.parametrize(
    "document", ["- just a list", "rules: 5", "{rules: [{name: x}]", "extra: 1\nrules: []"]
)
def test_a_malformed_document_is_rejected(document: str) -> None:
    with pytest.raises(ValidationError):
        parse_policy(document)


def test_an_empty_document_is_a_policy_that_denies_everything() -> None:
    doc = parse_policy("")
    assert doc.rules == []
    assert evaluate(doc, _facts()).outcome == Outcome.DENY


@pytest.mark.parametrize("days", [["Monxyz"], ["mo"], ["weekday"]])
def test_day_names_must_be_real_days(days: list[str]) -> None:
    with pytest.raises(ValidationError):
        parse_policy(
            yaml.safe_dump(
                {"rules": [{"name": "r", "match": {"days": days}, "auto_approve": True}]}
            )
        )


def test_an_empty_hours_window_is_rejected() -> None:
    with pytest.raises(ValidationError):
        parse_policy(
            yaml.safe_dump(
                {"rules": [{"name": "r", "match": {"hours": "09:00-09:00"}, "auto_approve": True}]}
            )
        )

"""Pure rules: names, durations, Sensitive, permissions."""

from __future__ import annotations

import pickle
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jitvault.domain import (
    GRANTS,
    MAX_ACCOUNT_NAME_BYTES,
    Permission,
    Principal,
    Role,
    Sensitive,
    allowed,
    authorize,
    normalize_username,
    parse_duration,
    validate_account_name,
    validate_username,
)
from jitvault.errors import Forbidden, ValidationError


def test_user_names_fold_case_and_width_to_one_form() -> None:
    assert normalize_username("Alice") == "alice"
    assert normalize_username("ALICE") == "alice"
    assert normalize_username("\uff41\uff4c\uff49\uff43\uff45") == "alice"  # full-width
    assert validate_username("\uff21lice") == "alice"


@pytest.mark.parametrize("bad", ["", "-lead", "a b", "a;b", "x" * 64, "al\x00ice", "é" * 3])
def test_invalid_user_names_are_rejected_with_the_rule(bad: str) -> None:
    with pytest.raises(ValidationError) as err:
        validate_username(bad)
    assert err.value.hint


def test_account_names_over_63_bytes_are_rejected_not_truncated() -> None:
    ok = "a" * MAX_ACCOUNT_NAME_BYTES
    assert validate_account_name(ok) == ok
    with pytest.raises(ValidationError):
        validate_account_name("a" * (MAX_ACCOUNT_NAME_BYTES + 1))
    with pytest.raises(ValidationError):
        validate_account_name("é" * 32)  # 64 bytes in UTF-8
    for bad in ("", "a\x00b", "a\nb"):
        with pytest.raises(ValidationError):
            validate_account_name(bad)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("1h", 3600), ("2h30m", 9000), ("45s", 45), ("7d", 604800), ("1w", 604800)],
)
def test_durations_parse(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["", "h", "1x", "1h 30m", "-1h", "1.5h", "30mm"])
def test_malformed_durations_are_rejected(bad: str) -> None:
    with pytest.raises(ValidationError):
        parse_duration(bad)


@given(st.text(min_size=1, max_size=40))
def test_sensitive_never_prints_its_value(value: str) -> None:
    s = Sensitive("CANARY" + value)
    for rendered in (repr(s), str(s), f"{s}", f"{s!r}", f"{s:>20}", str([s]), str({"k": s})):
        assert "CANARY" not in rendered
    assert s.reveal() == "CANARY" + value


def test_sensitive_refuses_pickling_and_compares_by_value() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(Sensitive("x"))
    assert Sensitive("a") == Sensitive("a")
    assert Sensitive(b"a") != Sensitive(b"b")


def test_every_permission_is_granted_to_admin_and_only_listed_roles() -> None:
    assert set(GRANTS) == set(Permission), "every permission needs a row in GRANTS"
    for perm, roles in GRANTS.items():
        assert Role.ADMIN in roles, perm
        for role in Role:
            p = Principal(1, "u", role)
            assert allowed(p, perm) == (role in roles)


def test_requesters_cannot_create_users_or_read_the_audit_log() -> None:
    p = Principal(1, "bob", Role.REQUESTER)
    for perm in (Permission.USER_CREATE, Permission.AUDIT_READ, Permission.KEY_ROTATE):
        with pytest.raises(Forbidden):
            authorize(p, perm)

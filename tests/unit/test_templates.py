"""Account templates: names that are valid identifiers on every target, rejected not truncated."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jitvault.domain import ephemeral_username, validate_template, validate_template_name
from jitvault.errors import ValidationError


def test_an_ephemeral_name_fits_postgres_and_linux_even_for_the_longest_template() -> None:
    name = ephemeral_username("a" * 16, 999_999_999_999)
    assert name == f"jv_{'a' * 16}_999999999999"
    assert len(name.encode()) <= 32


@given(st.text(min_size=0, max_size=40))
def test_a_template_name_is_accepted_only_if_it_is_a_plain_short_identifier(name: str) -> None:
    plain = (
        1 <= len(name) <= 16
        and name[0] in "abcdefghijklmnopqrstuvwxyz"
        and all(c in "abcdefghijklmnopqrstuvwxyz0123456789_" for c in name)
    )
    if plain:
        assert validate_template_name(name) == name
    else:
        with pytest.raises(ValidationError):
            validate_template_name(name)


@pytest.mark.parametrize(
    ("roles", "on_drop", "heir", "message"),
    [
        (("r" * 64,), "drop_owned", None, "64 bytes"),
        (("é" * 32,), "drop_owned", None, "64 bytes"),
        (("bad\x00role",), "drop_owned", None, "invalid account name"),
        (("dup", "dup"), "drop_owned", None, "listed twice"),
        ((), "reassign_owned", None, "--reassign-to"),
        ((), "drop_owned", "heir", "goes with --on-drop reassign_owned"),
        ((), "cascade", None, "unknown --on-drop"),
    ],
)
def test_a_template_with_a_bad_role_or_drop_rule_is_rejected(
    roles: tuple[str, ...], on_drop: str, heir: str | None, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        validate_template("analyst", "ephemeral", roles, on_drop, heir)


def test_a_template_at_the_limits_is_accepted() -> None:
    validate_template("analyst", "ephemeral", ("r" * 63, "ü" * 31), "reassign_owned", "h" * 63)

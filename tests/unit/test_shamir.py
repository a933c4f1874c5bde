"""Shamir secret sharing over GF(256): any threshold of shares recovers, fewer do not."""

from __future__ import annotations

import base64
import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitvault.crypto import combine_shares, parse_share, split_secret
from jitvault.domain import Sensitive
from jitvault.errors import ValidationError

SECRET = Sensitive(os.urandom(32))
SHARES = split_secret(SECRET, 5, 3)


def _recovered(subset: tuple[Sensitive[str], ...]) -> bytes:
    return combine_shares(list(subset)).reveal()


def test_split_makes_five_distinct_well_formed_shares() -> None:
    assert len(SHARES) == 5
    assert len({s.reveal() for s in SHARES}) == 5
    xs = []
    for share in SHARES:
        assert share.reveal().startswith("jvs1-")
        x, y = parse_share(share)
        assert len(y) == 32
        xs.append(x)
        assert SECRET.reveal() not in base64.urlsafe_b64decode(share.reveal()[5:] + "==")
    assert sorted(xs) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("subset", list(itertools.combinations(range(5), 3)))
def test_every_three_of_five_shares_recover_the_secret(subset: tuple[int, ...]) -> None:
    for order in itertools.permutations(subset):
        assert _recovered(tuple(SHARES[i] for i in order)) == SECRET.reveal()


@pytest.mark.parametrize(
    "subset",
    [*itertools.combinations(range(5), 4), tuple(range(5))],
)
def test_every_four_or_five_of_five_shares_recover_the_secret(subset: tuple[int, ...]) -> None:
    assert _recovered(tuple(SHARES[i] for i in subset)) == SECRET.reveal()


@pytest.mark.parametrize("subset", list(itertools.combinations(range(5), 2)))
def test_no_two_of_five_shares_recover_the_secret(subset: tuple[int, ...]) -> None:
    got = _recovered(tuple(SHARES[i] for i in subset))
    assert len(got) == len(SECRET.reveal())
    assert got != SECRET.reveal()


@pytest.mark.parametrize("index", range(5))
def test_a_single_share_does_not_recover_the_secret(index: int) -> None:
    assert _recovered((SHARES[index],)) != SECRET.reveal()


def test_the_share_values_differ_between_two_splits_of_one_secret() -> None:
    again = split_secret(SECRET, 5, 3)
    assert {s.reveal() for s in again}.isdisjoint({s.reveal() for s in SHARES})
    # and mixing shares of two splits recovers garbage, not the secret
    assert _recovered((SHARES[0], SHARES[1], again[2])) != SECRET.reveal()


def _mistyped(text: str, pos: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    replacement = alphabet[(alphabet.index(text[pos]) + 17) % 64]
    return text[:pos] + replacement + text[pos + 1 :]


def test_a_mistyped_share_fails_its_checksum_at_every_position() -> None:
    text = SHARES[0].reveal()
    body_start = len("jvs1-")
    # the last character also carries 4 padding bits, so skip it: any other typo must be caught
    for pos in range(body_start, len(text) - 1):
        bad = Sensitive(_mistyped(text, pos))
        with pytest.raises(ValidationError, match="checksum"):
            parse_share(bad)
        with pytest.raises(ValidationError, match="checksum"):
            combine_shares([bad, SHARES[1], SHARES[2]])


@pytest.mark.parametrize(
    ("share", "message"),
    [
        ("", "not a jitvault unseal share"),
        ("jvs2-AAAA", "not a jitvault unseal share"),
        ("hunter2", "not a jitvault unseal share"),
        ("jvs1-", "checksum"),
        ("jvs1-AAAA", "checksum"),
        ("jvs1-A", "base64"),
    ],
)
def test_malformed_shares_are_refused(share: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_share(Sensitive(share))


def test_a_truncated_share_is_refused() -> None:
    text = SHARES[0].reveal()
    for cut in (1, 4, 8, len(text) // 2):
        with pytest.raises(ValidationError):
            parse_share(Sensitive(text[:-cut]))


def test_surrounding_whitespace_of_a_pasted_share_is_ignored() -> None:
    padded = Sensitive(f"  {SHARES[0].reveal()}\n")
    assert parse_share(padded) == parse_share(SHARES[0])


def test_a_duplicate_share_is_refused() -> None:
    with pytest.raises(ValidationError, match="twice"):
        combine_shares([SHARES[0], SHARES[0], SHARES[1]])
    # the same share pasted with whitespace is still the same share
    with pytest.raises(ValidationError, match="twice"):
        combine_shares([SHARES[0], Sensitive(SHARES[0].reveal() + "\n"), SHARES[1]])


def test_shares_of_different_lengths_are_refused() -> None:
    other = split_secret(Sensitive(os.urandom(16)), 5, 3)
    with pytest.raises(ValidationError, match="different splits"):
        combine_shares([SHARES[0], SHARES[1], other[2]])


@pytest.mark.parametrize(("shares", "threshold"), [(5, 1), (2, 3), (256, 3), (3, 0), (1, 1)])
def test_impossible_split_parameters_are_refused(shares: int, threshold: int) -> None:
    with pytest.raises(ValidationError):
        split_secret(SECRET, shares, threshold)


def test_shares_never_show_in_text() -> None:
    for share in SHARES:
        assert share.reveal() not in repr(SHARES)
        assert share.reveal() not in f"{share}"


@settings(max_examples=60, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=48),
    n=st.integers(min_value=2, max_value=9),
    data=st.data(),
)
def test_any_threshold_subset_recovers_and_smaller_subsets_do_not(
    secret: bytes, n: int, data: st.DataObject
) -> None:
    k = data.draw(st.integers(min_value=2, max_value=n), label="threshold")
    shares = split_secret(Sensitive(secret), n, k)
    enough = data.draw(
        st.lists(st.integers(0, n - 1), min_size=k, max_size=n, unique=True), label="enough"
    )
    assert combine_shares([shares[i] for i in enough]).reveal() == secret
    fewer = enough[: k - 1]
    # below the threshold the result is (almost surely) not the secret; for a one-byte secret
    # a chance match is 1/256 per draw, so only assert it for secrets of 8 bytes or more
    if len(secret) >= 8:
        assert combine_shares([shares[i] for i in fewer]).reveal() != secret

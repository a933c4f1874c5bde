"""A session's end reason says which grant end cut it; the grant's own words do not count."""

from __future__ import annotations

import pytest

from jitvault.domain import RequestState
from jitvault.services.grants import grant_end_of, session_end_reason


@pytest.mark.parametrize("state", [RequestState.REVOKED, RequestState.ENDED])
@pytest.mark.parametrize(
    "reason", ["expired", "revoked", "grant revoked: no", "", "a: b", "ended early"]
)
def test_the_grant_end_is_read_from_the_prefix_alone(state: RequestState, reason: str) -> None:
    assert grant_end_of(session_end_reason(state, reason)) is state


@pytest.mark.parametrize(
    "end_reason",
    [
        "client closed",
        "ssh key removed",
        "lost: the proxy node holding it stopped (no heartbeat)",
        "grant revoked",  # no reason part: not what a grant's end writes
        "grant bogus: revoked",
        "the grant revoked: x",
    ],
)
def test_other_end_reasons_name_no_grant_end(end_reason: str) -> None:
    assert grant_end_of(end_reason) is None

"""The request state machine and who may decide a request."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from jitvault.domain import AccessKind, Principal, Role
from jitvault.domain.requests import (
    TRANSITIONS,
    AccessRequest,
    RequestState,
    check_can_approve,
    transition,
)
from jitvault.errors import Conflict, Forbidden

LEGAL = sorted(
    ((a, b) for a, targets in TRANSITIONS.items() for b in targets), key=lambda p: (p[0], p[1])
)
ILLEGAL = sorted(
    (a, b) for a, b in itertools.product(RequestState, RequestState) if (a, b) not in set(LEGAL)
)
TERMINAL = (
    RequestState.DENIED,
    RequestState.CANCELLED,
    RequestState.EXPIRED,
    RequestState.ENDED,
    RequestState.REVOKED,
)

REQUESTER_ID = 7


def _request(**kw: object) -> AccessRequest:
    at = datetime(2026, 1, 14, 12, 0, tzinfo=UTC)
    base = AccessRequest(
        id=1,
        requester_id=REQUESTER_ID,
        requester="alice",
        target="pg-prod",
        kind=AccessKind.ACCOUNT,
        name="app_owner",
        duration=timedelta(minutes=30),
        reason="INC-1",
        state=RequestState.PENDING,
        created_at=at,
        expires_at=at + timedelta(hours=1),
        rule="prod-needs-two-dbas",
        required_approvals=2,
        approver_groups=("dba",),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_every_state_is_in_the_transition_table() -> None:
    assert set(TRANSITIONS) == set(RequestState)


def test_the_transition_table_is_the_documented_machine() -> None:
    s = RequestState
    documented = sorted(
        [
            (s.PENDING, s.APPROVED),
            (s.PENDING, s.DENIED),
            (s.PENDING, s.CANCELLED),
            (s.PENDING, s.EXPIRED),
            (s.APPROVED, s.ACTIVE),
            (s.APPROVED, s.CANCELLED),
            (s.APPROVED, s.REVOKED),
            (s.APPROVED, s.EXPIRED),  # queued for its account past its window
            (s.ACTIVE, s.ENDED),
            (s.ACTIVE, s.REVOKED),
        ]
    )
    assert documented == LEGAL
    for state in TERMINAL:
        assert TRANSITIONS[state] == frozenset()


@pytest.mark.parametrize(("current", "new"), LEGAL, ids=lambda s: str(s))
def test_every_legal_transition_is_allowed(current: RequestState, new: RequestState) -> None:
    assert transition(current, new) == new


@pytest.mark.parametrize(("current", "new"), ILLEGAL, ids=lambda s: str(s))
def test_every_illegal_transition_raises_conflict_naming_both_states(
    current: RequestState, new: RequestState
) -> None:
    with pytest.raises(Conflict) as err:
        transition(current, new)
    assert current.value in err.value.message
    assert new.value in err.value.message


def test_no_state_may_transition_to_itself_or_back_to_pending() -> None:
    for state in RequestState:
        with pytest.raises(Conflict):
            transition(state, state)
        with pytest.raises(Conflict):
            transition(state, RequestState.PENDING)


def test_every_pair_is_either_legal_or_illegal() -> None:
    assert len(LEGAL) + len(ILLEGAL) == len(RequestState) ** 2


# --- who may decide -----------------------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role))
def test_the_requester_can_never_decide_their_own_request_whatever_their_role(role: Role) -> None:
    me = Principal(REQUESTER_ID, "alice", role, ("dba", "dev"))
    with pytest.raises(Forbidden) as err:
        check_can_approve(me, _request())
    assert "own request" in err.value.message
    # not even when the request names no approver groups
    with pytest.raises(Forbidden):
        check_can_approve(me, _request(approver_groups=()))


@pytest.mark.parametrize("role", [Role.REQUESTER, Role.AUDITOR])
def test_roles_that_do_not_decide_are_refused_even_in_the_approver_group(role: Role) -> None:
    with pytest.raises(Forbidden) as err:
        check_can_approve(Principal(8, "bob", role, ("dba",)), _request())
    assert role.value in err.value.message


@pytest.mark.parametrize("role", [Role.APPROVER, Role.ADMIN])
def test_deciders_outside_the_approver_groups_are_refused(role: Role) -> None:
    for groups in ((), ("dev",), ("dev", "oncall")):
        with pytest.raises(Forbidden) as err:
            check_can_approve(Principal(8, "bob", role, groups), _request())
        assert err.value.hint is not None
        assert "dba" in err.value.hint


@pytest.mark.parametrize("role", [Role.APPROVER, Role.ADMIN])
def test_a_decider_in_any_of_the_approver_groups_may_decide(role: Role) -> None:
    request = _request(approver_groups=("dba", "sre"))
    for groups in (("dba",), ("sre",), ("dev", "sre")):
        check_can_approve(Principal(8, "bob", role, groups), request)


def test_the_requester_is_recognized_by_user_id_not_by_name() -> None:
    # same id under another name: still the requester
    with pytest.raises(Forbidden):
        check_can_approve(Principal(REQUESTER_ID, "ALICE", Role.ADMIN, ("dba",)), _request())
    # same name, another id: someone else (names are unique, so this is another user)
    check_can_approve(Principal(REQUESTER_ID + 1, "alice", Role.APPROVER, ("dba",)), _request())

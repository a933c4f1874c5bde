"""The background worker's passes on a real store: an idle pass takes no write transaction (the
sweep asks first what is due; re-encryption looks for values under older key terms only while
there may be some: a new active term, or the recheck interval passed), and work that is due is
still done."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

import pytest

from jitvault.domain import AccountMode, Sensitive
from jitvault.lifecycle import worker as worker_module
from jitvault.lifecycle.worker import Worker
from jitvault.services import Node, grants, keys, targets
from tests.conftest import Booted
from tests.integration.test_session_registry import _open


def _looks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many values each look of the worker moved (one entry per reencrypt_step call)."""
    moved: list[int] = []
    step = keys.reencrypt_step

    def counted(node: object, batch: int = 200) -> int:
        n = step(node, batch)  # type: ignore[arg-type]
        moved.append(n)
        return n

    monkeypatch.setattr(keys, "reencrypt_step", counted)
    return moved


def test_an_idle_worker_looks_for_old_key_terms_again_only_on_a_new_term_or_after_the_recheck(
    booted: Booted, monkeypatch: pytest.MonkeyPatch
) -> None:
    node, admin = booted.node, booted.admin
    targets.add_target(node, admin, "db1", "postgres", {"host": "127.0.0.1"})
    for i in range(3):
        targets.add_account(node, admin, "db1", f"a{i}", AccountMode.INJECTED, Sensitive("pw-x"))
    looks = _looks(monkeypatch)
    worker = Worker(node, interval=60)

    worker.run_once()
    assert looks == [0]  # the first pass looks, and finds nothing under an older term
    worker.run_once()
    worker.run_once()
    assert looks == [0]  # the same term: no more looks

    before = keys.status(node)
    keys.rotate_key(node, admin)
    old = keys.status(node).remaining
    assert old > 0  # the accounts' secrets (and more) are under the old term
    worker.run_once()
    assert looks == [0, old, 0]  # a new term: it moved them all, then found none left
    after = keys.status(node)
    assert after.remaining == 0
    assert after.active_term == before.active_term + 1
    worker.run_once()
    assert len(looks) == 3  # done: no look again

    monkeypatch.setattr(worker_module, "REENCRYPT_RECHECK_SECONDS", 0.0)
    worker.run_once()
    assert len(looks) == 4  # the recheck interval passed: it looks again
    for i in range(3):
        secret = targets.account_secret(node, targets.get_account(node, admin, "db1", f"a{i}"))
        assert secret is not None
        assert secret.reveal() == "pw-x"


def _writes(node: Node, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per write transaction the node opens from now on."""
    opened: list[int] = []
    write: Callable[[], AbstractContextManager[Any]] = node.write

    def counted() -> AbstractContextManager[Any]:
        opened.append(1)
        return write()

    monkeypatch.setattr(node, "write", counted)
    return opened


def test_an_idle_sweep_opens_no_write_transaction_and_a_due_one_ends_the_grant(
    booted: Booted, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticket, _ = _open(booted, minutes=30)  # a live grant, ending in 30 minutes
    node = booted.node
    writes = _writes(node, monkeypatch)
    worker = Worker(node, interval=60)
    worker.run_once()  # the first pass: reconciles rotations, looks for old key terms
    writes.clear()
    assert grants.sweep(node).total == 0
    worker.run_once()
    assert writes == []

    later = node.clock() + timedelta(minutes=31)
    assert grants.sweep(node, at=later).ended == 1
    assert writes  # what is due is still claimed in a write transaction
    ended = grants.get_grant(node, booted.admin, ticket.grant.id)
    assert ended.ended_at is not None
    assert ended.end_reason == "expired"

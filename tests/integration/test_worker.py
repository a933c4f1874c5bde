"""The background worker's re-encryption step on a real store: it looks for values under older
key terms only while there may be some (a new active term, or the recheck interval passed), and
moves them all when there are."""

from __future__ import annotations

import pytest

from jitvault.domain import AccountMode, Sensitive
from jitvault.lifecycle import worker as worker_module
from jitvault.lifecycle.worker import Worker
from jitvault.services import keys, targets
from tests.conftest import Booted


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

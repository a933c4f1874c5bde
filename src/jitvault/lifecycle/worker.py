"""The background worker of a node: one daemon thread, one pass per interval.

Each pass: auto-unseal if the key provider can (Transit that was unreachable at start); sweep
requests and grants (lapse, start, end on time, warn of expiry); run due jobs (grant cleanup,
notifications); move stored values to the active key term. Each step's errors are logged and
retried on the next pass; the worker never takes the server down. The first pass runs at start,
so grants that expired while the server was down end within one interval.

Re-encryption looks for values under older key terms only while there may be some: once a pass
finds none, values are sealed under the active term alone (a node whose keyring is behind the
database's is refused: :class:`~jitvault.storage.sealed.StaleKeyring`), so the next look waits
for a new active term, or for ``REENCRYPT_RECHECK_SECONDS`` (a database restored from a backup
made before a key rotation). An idle pass then opens no write transaction for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from jitvault.errors import JitvaultError
from jitvault.osthread import name_os_thread
from jitvault.services import Node, grants, jobs, keys, rotation, sessions

log = logging.getLogger(__name__)

BATCHES_PER_PASS = 5
#: how long a pass that found nothing under an older key term is trusted, the term unchanged
REENCRYPT_RECHECK_SECONDS = 60.0


class Worker:
    def __init__(self, node: Node, interval: float | None = None) -> None:
        self.node = node
        self.interval = interval if interval is not None else node.settings.server.worker_interval
        self._stop = threading.Event()
        self._reconciled = False
        #: (active term, monotonic time) of the last pass that found nothing to re-encrypt
        self._reencrypted: tuple[int, float] | None = None
        self._thread: threading.Thread | None = None

    def run_once(self) -> bool:
        """One bounded pass; True if it found work (so the next pass should come at once)."""
        vault = self.node.vault
        if vault.sealed:
            if vault.provider_name == "shamir":
                return False
            try:
                vault.auto_unseal()
            except JitvaultError as exc:
                log.warning("vault still sealed: %s", exc)
                return False
        if not self._reconciled:
            # rotations a crash left in flight are finished or rolled back before anything
            # else uses their accounts
            try:
                rotation.reconcile_all(self.node)
                self._reconciled = True
            except JitvaultError as exc:
                log.warning("reconciling rotations failed, will retry: %s", exc)
        # Every step is bounded, so that a burst of one kind of work (10,000 expiries, a key
        # rotation of a large vault) never holds back the others, cleanup jobs above all.
        steps: tuple[tuple[str, Callable[[], int]], ...] = (
            ("sweep", lambda: grants.sweep(self.node, max_batches=BATCHES_PER_PASS).total),
            ("jobs", lambda: jobs.run_due_jobs(self.node)),
            ("lost sessions", lambda: sessions.end_lost_sessions(self.node)),
            ("re-encryption", self._reencrypt),
        )
        busy = False
        for name, step in steps:
            try:
                busy = bool(step()) or busy
            except JitvaultError as exc:
                log.warning("worker step %s failed: %s", name, exc)
        return busy

    def _reencrypt(self) -> int:
        term, now = self.node.vault.keyring.active_term, time.monotonic()
        done = self._reencrypted
        if done is not None and done[0] == term and now - done[1] < REENCRYPT_RECHECK_SECONDS:
            return 0
        self._reencrypted = None
        moved_total = 0
        for _ in range(BATCHES_PER_PASS):
            moved = keys.reencrypt_step(self.node)
            if not moved:  # none left under an older term (and the unused terms retired)
                self._reencrypted = (term, now)
                break
            moved_total += moved
        if moved_total:
            log.info(
                "re-encrypted %d values under key term %d",
                moved_total,
                self.node.vault.keyring.active_term,
            )
        return moved_total

    def _loop(self) -> None:
        name_os_thread("jv-worker")
        while not self._stop.is_set():
            busy = False
            try:
                busy = self.run_once()
            except JitvaultError as exc:
                log.warning("worker pass failed: %s", exc)
            except Exception:
                log.exception("worker pass failed unexpectedly")
            if not busy:
                self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="jitvault-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


__all__ = ["Worker"]

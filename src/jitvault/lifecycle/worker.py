"""The background worker of a node: one daemon thread, one pass per interval.

Each pass: auto-unseal if the key provider can (Transit that was unreachable at start); sweep
requests and grants (lapse, start, end on time, warn of expiry); run due jobs (grant cleanup,
notifications); move stored values to the active key term. Each step's errors are logged and
retried on the next pass; the worker never takes the server down. The first pass runs at start,
so grants that expired while the server was down end within one interval.
"""

from __future__ import annotations

import logging
import threading

from jitvault.errors import JitvaultError
from jitvault.services import Node, grants, jobs, keys

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, node: Node, interval: float | None = None) -> None:
        self.node = node
        self.interval = interval if interval is not None else node.settings.server.worker_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> None:
        vault = self.node.vault
        if vault.sealed:
            if vault.provider_name == "shamir":
                return
            try:
                vault.auto_unseal()
            except JitvaultError as exc:
                log.warning("vault still sealed: %s", exc)
                return
        for step in (grants.sweep, jobs.run_due_jobs):
            try:
                step(self.node)
            except JitvaultError as exc:
                log.warning("worker step %s failed: %s", step.__module__, exc)
        moved = -1
        while moved != 0 and not self._stop.is_set():
            moved = keys.reencrypt_step(self.node)
            if moved:
                log.info(
                    "re-encrypted %d values under key term %d", moved, vault.keyring.active_term
                )

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except JitvaultError as exc:
                log.warning("worker pass failed: %s", exc)
            except Exception:
                log.exception("worker pass failed unexpectedly")
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="jitvault-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


__all__ = ["Worker"]

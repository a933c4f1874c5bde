"""The server's log lines, written by a thread of their own: no thread that logs waits for
whoever reads the log.

Python's logging writes a record in the thread that logs it. When the reader of the server's
standard error stops taking lines (a terminal paused with Ctrl-S, a log collector's pipe that
stalls), that write blocks, and the thread with it: on the proxies' event loop, every login,
every recorded statement's hand-over and every cut of a revoked session would wait for the
reader. :class:`LogOutput` queues each record (formatted where it was logged) and one thread,
``jv-log``, writes them out. While the output takes nothing, at most ``max_queued`` records
wait; the records after them are dropped and counted, and once the output takes lines again a
warning says how many went missing. The log is for operators: the record of what was done is
the audit log, which is stored (and fails closed) in the database, not here.

:meth:`LogOutput.flush` (run when the server ends at a SIGTERM, and by ``logging.shutdown`` at
exit) waits for what is queued for at most ``FLUSH_SECONDS``: a stopping server writes its last
lines, and an output that stays blocked cannot keep it from stopping. Imports nothing of
jitvault's but the thread namer.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque

from jitvault.osthread import name_os_thread

#: records waiting for the output at most (beyond them, records are dropped and counted)
MAX_QUEUED = 10_000
#: how long a flush (and the exit) waits for the output at most
FLUSH_SECONDS = 2.0
#: the OS-level name of the writing thread
THREAD_NAME = "jv-log"

log = logging.getLogger(__name__)


class LogOutput(logging.Handler):
    """Hands each record to ``target`` (a handler that may block, e.g. a ``StreamHandler`` on
    stderr) in a thread of its own; see the module's docstring."""

    def __init__(self, target: logging.Handler, max_queued: int = MAX_QUEUED) -> None:
        super().__init__()
        self.target = target
        self.max_queued = max_queued
        self._queue: deque[logging.LogRecord] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._writing = False  # a record taken off the queue and not written yet
        self._dropped = 0  # records dropped since the last warning was queued
        #: records dropped since the start (the warnings say so as it happens)
        self.dropped_total = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="jitvault-log", daemon=True)
        self._thread.start()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """The record as it is now: its message formatted (arguments and exception text), in
        the thread that logged it; ``target`` adds the time, level and logger name."""
        message = self.format(record)
        prepared = copy.copy(record)
        prepared.message = prepared.msg = message
        prepared.args = None
        prepared.exc_info = prepared.exc_text = prepared.stack_info = None
        return prepared

    def emit(self, record: logging.LogRecord) -> None:
        try:
            prepared = self.prepare(record)
        except Exception:  # a record that cannot be formatted: as logging does
            self.handleError(record)
            return
        with self._cond:
            if self._closed:
                return
            if self._dropped:
                # the warning first, and in its place: the output took a record again
                if len(self._queue) + 2 > self.max_queued:
                    self._drop()
                    return
                self._queue.append(self._dropped_warning())
            elif len(self._queue) >= self.max_queued:
                self._drop()
                return
            self._queue.append(prepared)
            self._cond.notify()

    def _drop(self) -> None:
        self._dropped += 1
        self.dropped_total += 1

    def _dropped_warning(self) -> logging.LogRecord:
        """(lock held) the warning about the records dropped until now; the count restarts"""
        count, self._dropped = self._dropped, 0
        return log.makeRecord(
            log.name,
            logging.WARNING,
            __file__,
            0,
            f"{count} log record(s) were dropped: the log output (standard error) took no lines"
            f" while {self.max_queued} waited; whatever reads it (a terminal, a pipe, a log"
            " collector) must keep up",
            (),
            None,
        )

    def _run(self) -> None:
        name_os_thread(THREAD_NAME)
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return  # closed, and everything written
                record = self._queue.popleft()
                self._writing = True
            try:
                self.target.handle(record)
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()

    def flush(self) -> None:
        """Wait (at most :data:`FLUSH_SECONDS`) until what is queued now is written."""
        self.wait_written()

    def wait_written(self, timeout: float = FLUSH_SECONDS) -> bool:
        """Wait (at most ``timeout`` s) until nothing waits to be written; True if so. A count
        of dropped records not yet reported is queued first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._dropped and not self._closed:
                self._queue.append(self._dropped_warning())
                self._cond.notify()
            while self._queue or self._writing:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(left)
        return True  # (the target flushed each record as it wrote it)

    def close(self) -> None:
        """Write what is queued (bounded by :data:`FLUSH_SECONDS`), then stop taking records."""
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        super().close()


__all__ = ["FLUSH_SECONDS", "MAX_QUEUED", "THREAD_NAME", "LogOutput"]

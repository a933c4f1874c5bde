"""LogOutput: records written by a thread of their own, never waiting in the thread that logs."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from jitvault.logoutput import FLUSH_SECONDS, LogOutput


class _Gate(logging.Handler):
    """A target that writes nothing while its gate is shut (as a blocked stderr would)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.open = threading.Event()
        self.open.set()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.open.wait()
        self.lines.append(self.format(record))


@pytest.fixture
def gate() -> Iterator[_Gate]:
    target = _Gate()
    yield target
    target.open.set()


def _logger(output: LogOutput) -> logging.Logger:
    logger = logging.getLogger(f"jvtest.logoutput.{id(output)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.handlers = [output]
    return logger


def _until(what: str, condition: object, bound: float = 10.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_records_reach_the_target_in_order_from_another_thread(gate: _Gate) -> None:
    output = LogOutput(gate)
    logger = _logger(output)
    names: list[str] = []
    real_emit = gate.emit

    def emit(record: logging.LogRecord) -> None:
        names.append(threading.current_thread().name)
        real_emit(record)

    gate.emit = emit  # type: ignore[method-assign]
    for i in range(100):
        logger.info("line %d", i)
    assert output.wait_written()
    assert gate.lines == [f"INFO {logger.name}: line {i}" for i in range(100)]
    assert set(names) == {"jitvault-log"}
    output.close()


def test_logging_does_not_wait_for_a_blocked_output_and_says_what_it_dropped(
    gate: _Gate,
) -> None:
    """The warning is queued by the first record the queue takes again."""
    output = LogOutput(gate, max_queued=50)
    logger = _logger(output)
    gate.open.clear()
    logger.info("first")  # taken by the writer, which now waits in the target
    _until("the writer holds the first record", lambda: output._writing)
    logging_thread = threading.Thread(
        target=lambda: [logger.info("while blocked %d", i) for i in range(200)], daemon=True
    )
    logging_thread.start()
    logging_thread.join(10)
    assert not logging_thread.is_alive(), "logging waited for the blocked output"
    assert output.dropped_total == 150  # 50 waited, the rest were counted
    gate.open.set()
    _until("the queue is written", lambda: len(gate.lines) == 51)
    logger.warning("after")
    assert output.wait_written()
    assert gate.lines[0] == f"INFO {logger.name}: first"
    assert gate.lines[1:51] == [f"INFO {logger.name}: while blocked {i}" for i in range(50)]
    # the warning comes where the records went missing, then what came after
    warning, after = gate.lines[51:]
    assert warning.startswith("WARNING jitvault.logoutput: 150 log record(s) were dropped")
    assert "while 50 waited" in warning
    assert after == f"WARNING {logger.name}: after"
    output.close()


def test_a_flush_reports_drops_nothing_came_after(gate: _Gate) -> None:
    """(the server flushes at its end: a count is not lost for want of a later record)"""
    output = LogOutput(gate, max_queued=3)
    logger = _logger(output)
    gate.open.clear()
    for i in range(10):
        logger.info("r%d", i)
    gate.open.set()
    assert output.wait_written()
    assert gate.lines[-1].startswith("WARNING jitvault.logoutput: ")
    assert int(gate.lines[-1].split(": ", 1)[1].split()[0]) == output.dropped_total > 0
    assert len(gate.lines) == 10 - output.dropped_total + 1
    output.close()


def test_a_record_is_formatted_when_it_is_logged(gate: _Gate) -> None:
    output = LogOutput(gate)
    logger = _logger(output)
    gate.open.clear()
    state = ["before"]
    logger.info("state %s", state)
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    state[0] = "after"
    gate.open.set()
    assert output.wait_written()
    assert gate.lines[0] == f"INFO {logger.name}: state ['before']"
    assert gate.lines[1].startswith(f"ERROR {logger.name}: failed\nTraceback")
    assert gate.lines[1].endswith("ValueError: boom")
    output.close()


def test_close_writes_what_waits_then_takes_nothing(gate: _Gate) -> None:
    output = LogOutput(gate)
    logger = _logger(output)
    gate.open.clear()
    for i in range(5):
        logger.info("queued %d", i)
    threading.Timer(0.2, gate.open.set).start()
    output.close()
    assert gate.lines == [f"INFO {logger.name}: queued {i}" for i in range(5)]
    logger.info("after close")
    time.sleep(0.05)
    assert len(gate.lines) == 5
    _until("the writer ended", lambda: not output._thread.is_alive())


def test_close_on_an_output_that_stays_blocked_is_bounded(gate: _Gate) -> None:
    output = LogOutput(gate)
    logger = _logger(output)
    gate.open.clear()
    logger.info("stuck")
    started = time.monotonic()
    output.close()
    assert time.monotonic() - started < FLUSH_SECONDS + 1


_SIGTERM_CHILD = """
import logging, os, signal
from jitvault import runtime
runtime.configure_logging("info")
runtime.write_logs_at_sigterm()
for i in range({lines}):
    logging.getLogger("child").info("line %d", i)
os.kill(os.getpid(), signal.SIGTERM)
signal.pause()
"""


def test_sigterm_ends_the_process_once_what_waits_is_written() -> None:
    """As the server ends at a SIGTERM: no exit handler runs at a signal's default action, so
    without the handler most of the queue would be lost."""
    lines = 5_000
    done = subprocess.run(
        [sys.executable, "-c", _SIGTERM_CHILD.format(lines=lines)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -signal.SIGTERM, done.stderr[-2000:]
    written = [line for line in done.stderr.splitlines() if " INFO child: line " in line]
    assert len(written) == lines
    assert written[-1].endswith(f"INFO child: line {lines - 1}")

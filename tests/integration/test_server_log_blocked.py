"""A server whose log nobody reads keeps serving: logins go on, a revoke cuts in time.

The server's standard output and error go to a pipe of one page that the test stops reading
(as a terminal paused with Ctrl-S, or a stalled log collector, would). Once the pipe is full
every write to it blocks; the server's log lines are written by a thread of their own
(``jitvault.logoutput``), so no other thread waits for them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_pg_proxy import (
    TARGET,
    ProxyWorld,
    _access,
    _connect_info,
    _psycopg,
    proxy_world,
)
from tests.integration.test_pg_proxy_flood import _Queries
from tests.pgcluster import PgCluster
from tests.world import ServerWorld, server_world

#: Linux's fcntl for a pipe's size (not in Python 3.11's fcntl module)
F_SETPIPE_SZ = 1031
PAGE = os.sysconf("SC_PAGE_SIZE")
#: logins while the output is blocked (each logs three lines: the pipe holds about a dozen)
LOGINS = 40


class _StalledOutput:
    """A pipe of one page for a server's output, read by a thread until :meth:`stall`."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        fcntl.fcntl(self.write_fd, F_SETPIPE_SZ, PAGE)
        self.text = bytearray()
        self._reading = threading.Event()
        self._reading.set()
        self._paused = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            if not self._reading.is_set():
                self._paused.set()
                self._reading.wait(0.1)
                continue
            self._paused.clear()
            ready, _, _ = select.select([self.read_fd], [], [], 0.1)
            if ready:
                chunk = os.read(self.read_fd, 65536)
                if not chunk:
                    return
                self.text += chunk

    def stall(self) -> None:
        self._reading.clear()
        assert self._paused.wait(5), "the reader did not stop"

    def resume(self) -> None:
        self._reading.set()

    def waiting(self) -> int:
        """Bytes written and not read."""
        count = bytearray(4)
        fcntl.ioctl(self.read_fd, termios.FIONREAD, count)
        return int.from_bytes(count, "little")

    def wait_for(self, text: str, bound: float = 30.0) -> None:
        deadline = time.monotonic() + bound
        while text not in self.text.decode(errors="replace"):
            assert time.monotonic() < deadline, f"{text!r} not in the output"
            time.sleep(0.05)

    def close(self) -> None:
        self._stop = True
        self._reading.set()
        self._thread.join(5)
        os.close(self.read_fd)
        with contextlib.suppress(OSError):
            os.close(self.write_fd)


@pytest.fixture
def stalled() -> Iterator[_StalledOutput]:
    output = _StalledOutput()
    yield output
    output.close()


@pytest.fixture
def world(
    db_kind: str, tmp_path: Path, pg_cluster: PgCluster, stalled: _StalledOutput
) -> Iterator[ProxyWorld]:
    policy = (
        f"rules:\n  - name: stalled\n    match: {{targets: [{TARGET}]}}\n    auto_approve: true\n"
    )
    with proxy_world(db_kind, tmp_path, pg_cluster, policy, output=stalled.write_fd) as w:
        os.close(stalled.write_fd)  # the server has its copy
        yield w
        stalled.resume()  # let it write its last lines as it stops


def test_logins_and_a_revoke_go_on_while_nothing_reads_the_servers_log(
    world: ProxyWorld, stalled: _StalledOutput
) -> None:
    access = _access(world)
    info = _connect_info(world, access)
    stalled.stall()
    # every login logs its session's open, relay and end: the pipe fills, and its writer blocks
    for _ in range(LOGINS):
        with _psycopg(info, sslmode="disable") as conn:
            assert conn.execute("SELECT current_user").fetchone() == (access.role,)
    assert stalled.waiting() >= PAGE - 200, "the server's output did not fill its pipe"
    with _Queries(_psycopg(info, sslmode="disable")) as queries:
        session_id = int(world.cli("session", "list", "--live", env=world.admin_env)[0]["id"])
        queries.assert_cut_by_revoke(world, access.grant_id)
    assert stalled.waiting() >= PAGE - 200, "something read the server's output"
    # what was logged meanwhile is written once the output takes lines again
    stalled.resume()
    stalled.wait_for(f"postgres proxy: session {session_id} cut (access grant revoked")


def test_a_server_stopped_by_sigterm_writes_its_last_log_lines(
    db_kind: str, tmp_path: Path
) -> None:
    """The lines logged as it stops are written before the signal ends the process: uvicorn's
    last one comes after the app's shutdown, right before it raises the SIGTERM again."""
    with server_world(ServerWorld, db_kind, tmp_path, "alice") as w:
        pass  # the server stops here (SIGTERM)
    assert w.server.proc.returncode == -signal.SIGTERM  # still ended by the signal
    last = w.server.log.read_text(errors="replace").splitlines()[-1]
    assert last.endswith(f"INFO uvicorn.error: Finished server process [{w.server.proc.pid}]")

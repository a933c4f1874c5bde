"""What a test run that was killed left behind, removed by the next run at its start.

A run stopped by ``kill -9`` (or a lost terminal, or a CI timeout) runs no teardown: its
``jitvault server`` processes (their own sessions), its private PostgreSQL clusters and sshd
servers keep running, and its Linux test users and scratch databases stay. Each of those is
marked with the run that made it (:data:`RUN`, ``<pid>-<start time>`` of the pytest process):

* processes: the environment variable :data:`RUN_ENV`, which every child inherits (set at
  the start of the run, see ``conftest.py``);
* the tmp dirs of clusters and sshd servers: a file :data:`DIR_MARK` holding the run;
* Linux users made by the tests: their GECOS comment (:func:`user_comment`);
* scratch databases on the shared server: their ``COMMENT ON DATABASE`` (:func:`db_comment`).

:func:`sweep` removes what a run that is no longer alive made, and nothing of a live run (two
runs may share the machine: a clean-clone CI run beside a developer's). A run is alive while a
process with its pid and start time exists, so a reused pid does not keep a dead run's things.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

RUN_ENV = "JVTEST_RUN"
DIR_MARK = ".jvtest-run"
_COMMENT = re.compile(r"^jitvault-test run (\d+-\d+)$")
#: the tmp dirs of clusters (tests/pgcluster.py) and sshd servers (tests/sshd.py)
DIR_PREFIXES = ("jitvault-pg-", "jv-sshd-")


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks


def run_id(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{pid}-{_start_time(pid)}"  # no ':' (useradd refuses it in a comment)


#: this run
RUN = run_id()


def alive(run: str) -> bool:
    pid, _, started = run.partition("-")
    return pid.isdigit() and _start_time(int(pid)) == started


def user_comment() -> str:
    """The GECOS comment of a Linux user a test makes (``useradd --comment``)."""
    return f"jitvault-test run {RUN}"


def db_comment() -> str:
    return f"jitvault-test run {RUN}"


def _dead(comment: str | None) -> bool:
    m = _COMMENT.match(comment or "")
    return m is not None and not alive(m.group(1))


def mark_dir(path: Path) -> None:
    (path / DIR_MARK).write_text(RUN)


def _process_runs() -> Iterator[tuple[int, str]]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        for var in environ.split(b"\0"):
            if var.startswith(RUN_ENV.encode() + b"="):
                yield int(entry.name), var.split(b"=", 1)[1].decode(errors="replace")
                break


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    left = pids
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if Path(f"/proc/{p}").exists() and not _zombie(p)]
    return left


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def _stop(pids: list[int]) -> None:
    """SIGTERM, a bounded wait, then SIGKILL."""
    _signal_all(pids, signal.SIGTERM)
    _signal_all(_wait_gone(pids, 5.0), signal.SIGKILL)
    _wait_gone(pids, 5.0)


def _sweep_processes() -> list[str]:
    pids = [pid for pid, run in _process_runs() if pid != os.getpid() and not alive(run)]
    _stop(pids)
    return [f"process {pid}" for pid in pids]


def _pid_file_pid(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def _sweep_dirs(tmp: Path) -> list[str]:
    """Clusters (``data/postmaster.pid``) and sshd servers (``sshd.pid``) of dead runs are
    stopped by the pid in their dir; then the dir goes."""
    removed = []
    for d in tmp.iterdir():
        if not d.name.startswith(DIR_PREFIXES) or not d.is_dir():
            continue
        try:
            run = (d / DIR_MARK).read_text().strip()
        except OSError:
            continue  # not marked (an older run, or one being made now): not ours to judge
        if alive(run):
            continue
        pids = [
            p
            for p in (_pid_file_pid(d / "data" / "postmaster.pid"), _pid_file_pid(d / "sshd.pid"))
            if p is not None and Path(f"/proc/{p}").exists()
        ]
        # a postmaster takes SIGQUIT as an immediate shutdown (its backends go with it)
        _signal_all(pids, signal.SIGQUIT if (d / "data").exists() else signal.SIGTERM)
        _signal_all(_wait_gone(pids, 10.0), signal.SIGKILL)
        _wait_gone(pids, 5.0)
        shutil.rmtree(d, ignore_errors=True)
        removed.append(str(d))
    return removed


def _sweep_users(passwd: Path) -> list[str]:
    removed = []
    for line in passwd.read_text().splitlines():
        fields = line.split(":")
        if len(fields) < 5 or not _dead(fields[4]):
            continue
        name = fields[0]
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True, check=False)
        subprocess.run(["userdel", "--remove", "--force", name], capture_output=True, check=False)
        removed.append(f"user {name}")
    return removed


def _sweep_databases(dsn: str) -> list[str]:
    try:
        conn = psycopg.connect(f"{dsn}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.Error:
        return []  # no shared server: nothing of ours can be on it
    removed = []
    with conn:
        rows = conn.execute(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database"
        ).fetchall()
        for name, comment in rows:
            if _dead(comment):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                removed.append(f"database {name}")
    return removed


def sweep(
    dsn: str,
    tmp: Path | None = None,
    passwd: Path = Path("/etc/passwd"),
    report: Callable[[str], None] = print,
) -> list[str]:
    """Remove what dead runs left (see the module docstring); returns what went."""
    removed = _sweep_processes()
    removed += _sweep_dirs(tmp or Path(tempfile.gettempdir()))
    if os.geteuid() == 0:
        removed += _sweep_users(passwd)
    removed += _sweep_databases(dsn)
    if removed:
        report(f"removed what a killed test run left: {', '.join(removed)}")
    return removed


__all__ = [
    "DIR_MARK",
    "RUN",
    "RUN_ENV",
    "alive",
    "db_comment",
    "mark_dir",
    "run_id",
    "sweep",
    "user_comment",
]

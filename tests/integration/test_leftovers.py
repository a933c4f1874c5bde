"""A killed test run's leftovers are removed by the next run's sweep, and a live run's are not.

The killed run is real: a Python process that starts a private PostgreSQL cluster, a scratch
database on the shared server, a Linux user and a background process the way the suite's
fixtures do, and then dies by SIGKILL, running no teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests import leftovers
from tests.pgcluster import find_pg_bin
from tests.support import PG_HOST_DSN

ROOT = Path(__file__).resolve().parents[2]

_KILLED_RUN = """
import json, os, secrets, subprocess, sys, time
from tests import leftovers
os.environ[leftovers.RUN_ENV] = leftovers.RUN
from tests.pgcluster import find_pg_bin, start_cluster
from tests.support import scratch_postgres
cluster = start_cluster(find_pg_bin())
scratch = scratch_postgres("jvleft")  # held: its exit (a drop) must never run
url = scratch.__enter__()
sleeper = subprocess.Popen(["sleep", "300"], start_new_session=True)
user = "jvleft" + secrets.token_hex(3)
if os.geteuid() == 0:
    subprocess.run(["useradd", "--comment", leftovers.user_comment(), user], check=True)
made = {
    "run": leftovers.RUN, "dir": str(cluster.workdir), "postmaster": cluster.postmaster_pid(),
    "db": url.rsplit("/", 1)[1], "sleeper": sleeper.pid, "user": user,
}
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump(made, f)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(300)
"""


def _exists(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _db_exists(name: str) -> bool:
    with psycopg.connect(f"{PG_HOST_DSN}/postgres", autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextlib.contextmanager
def _killed_run(tmp: Path) -> Iterator[dict[str, Any]]:
    """Start the run above, wait (bounded) for what it made, SIGKILL it; clean up whatever is
    left."""
    env = {k: v for k, v in os.environ.items() if k != leftovers.RUN_ENV}
    env["PYTHONPATH"] = str(ROOT)
    report = tmp / "made.json"
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_RUN, str(report)], cwd=ROOT, env=env, start_new_session=True
    )
    made: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 90
        while not report.exists():
            assert child.poll() is None, "the run to be killed failed before it made everything"
            assert time.monotonic() < deadline, "the run to be killed did not make its things"
            time.sleep(0.1)
        made = json.loads(report.read_text())
        child.kill()
        child.wait(10)
        yield made
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        for pid in (made.get("postmaster"), made.get("sleeper")):
            if pid and _exists(pid):
                os.kill(pid, signal.SIGKILL)
        if made.get("dir"):
            shutil.rmtree(made["dir"], ignore_errors=True)
        if made.get("db"):
            with psycopg.connect(f"{PG_HOST_DSN}/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{made["db"]}" WITH (FORCE)')
        if made.get("user") and _user_exists(made["user"]):
            subprocess.run(["userdel", "--remove", "--force", made["user"]], check=False)


@pytest.mark.skipif(find_pg_bin() is None, reason="needs PostgreSQL's server binaries")
def test_what_a_killed_run_left_is_removed_by_the_next_runs_sweep(tmp_path: Path) -> None:
    with _killed_run(tmp_path) as made:
        assert not leftovers.alive(made["run"])
        # it did leak: nothing ran its teardown
        assert made["postmaster"]
        assert _exists(made["postmaster"])
        assert _exists(made["sleeper"])
        assert Path(made["dir"]).exists()
        assert _db_exists(made["db"])
        if os.geteuid() == 0:
            assert _user_exists(made["user"])
        reports: list[str] = []
        removed = leftovers.sweep(PG_HOST_DSN, report=reports.append)
        assert not _exists(made["postmaster"])
        assert not _exists(made["sleeper"])
        assert not Path(made["dir"]).exists()
        assert not _db_exists(made["db"])
        assert f"database {made['db']}" in removed
        assert made["dir"] in removed
        if os.geteuid() == 0:
            assert not _user_exists(made["user"])
            assert f"user {made['user']}" in removed
        assert reports
        assert "killed test run" in reports[0]


def test_a_live_runs_things_are_left_alone(tmp_path: Path) -> None:
    """This run's marks (alive) on a process, a marked dir and a database: the sweep keeps
    them all; a dir marked by a run that is gone is removed."""
    sleeper = subprocess.Popen(
        ["sleep", "300"], env={**os.environ, leftovers.RUN_ENV: leftovers.RUN}
    )
    mine = tmp_path / "jv-sshd-mine"
    mine.mkdir()
    leftovers.mark_dir(mine)
    gone_run = subprocess.Popen(["sleep", "300"])
    dead = leftovers.run_id(gone_run.pid)
    gone_run.kill()
    gone_run.wait(10)
    theirs = tmp_path / "jv-sshd-theirs"
    theirs.mkdir()
    (theirs / leftovers.DIR_MARK).write_text(dead)
    unmarked = tmp_path / "jitvault-pg-unmarked"  # one being made now, or an old run's
    unmarked.mkdir()
    name = f"jvleft_{secrets.token_hex(4)}"
    with psycopg.connect(f"{PG_HOST_DSN}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute(f"COMMENT ON DATABASE \"{name}\" IS '{leftovers.db_comment()}'")
    try:
        removed = leftovers.sweep(PG_HOST_DSN, tmp=tmp_path, report=lambda _: None)
        assert _exists(sleeper.pid)
        assert mine.exists()
        assert unmarked.exists()
        assert not theirs.exists()
        assert _db_exists(name)
        assert str(theirs) in removed
        assert f"process {sleeper.pid}" not in removed
        assert f"database {name}" not in removed
    finally:
        sleeper.kill()
        sleeper.wait(10)
        with psycopg.connect(f"{PG_HOST_DSN}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

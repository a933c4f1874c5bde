"""A throw-away PostgreSQL cluster of the tests' own (``pg_cluster`` fixture, session scope).

The cluster runs as the ``postgres`` system user (initdb refuses root) from a private tmp dir
(mode 0700, owned by ``postgres``) that also holds its Unix socket and its log. It listens on a
free loopback port only; TCP logins use SCRAM-SHA-256 (nothing trusts TCP). The fixture's own
setup uses the Unix socket as ``postgres`` (trust, reachable only by root and ``postgres``).

``log_statement = 'all'`` with a parseable ``log_line_prefix`` (``%m [%p] %a: ``) lets tests read
every statement a client sent (:meth:`PgCluster.entries_since`), e.g. to prove that no plaintext
password reached the server and that hostile names arrived quoted.

The superuser ``vault_admin`` gets a random password; only its SCRAM verifier is ever sent (over
the socket, never on a command line).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from jitvault.crypto.tls import ensure_self_signed
from jitvault.domain import Sensitive
from jitvault.plugin_api import TargetAccess
from jitvault.plugin_api.scram import scram_verifier
from tests import leftovers
from tests.support import free_port

ADMIN_USER = "vault_admin"
FIXTURE_APP = "pgcluster-fixture"
PREFERRED_MAJOR = "15"

# "2024-05-01 10:00:00.123 UTC [1234] app: LOG:  statement: SELECT 1"
_ENTRY = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+) \[(?P<pid>\d+)\] "
    r"(?P<app>[^:]*): (?P<level>[A-Z]+):  (?P<message>.*)$",
    re.DOTALL,
)


def find_pg_bin() -> Path | None:
    """The bin dir of the installed PostgreSQL (15 if present, else the newest)."""
    override = os.environ.get("JITVAULT_TEST_PG_BIN")
    if override:
        return Path(override) if (Path(override) / "initdb").exists() else None
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return None
    versions = sorted(
        (d for d in root.iterdir() if (d / "bin" / "initdb").exists()),
        key=lambda d: (d.name == PREFERRED_MAJOR, int(d.name) if d.name.isdigit() else 0),
    )
    return versions[-1] / "bin" if versions else None


@dataclass(frozen=True)
class LogEntry:
    """One server log entry (continuation lines joined back)."""

    pid: int
    app: str
    level: str
    message: str

    @property
    def statement(self) -> str | None:
        """The SQL text of a ``statement:`` / ``execute <name>:`` LOG entry, else None."""
        if self.level != "LOG":
            return None
        m = re.match(r"(?:statement|execute [^:]*): (.*)$", self.message, re.DOTALL)
        return m.group(1) if m else None


def parse_log(text: str) -> list[LogEntry]:
    """Split stderr-format log text into entries.

    PostgreSQL prefixes every entry with ``log_line_prefix`` and turns each newline inside a
    message into newline + tab, so a line not starting with a tab begins a new entry.
    """
    entries: list[LogEntry] = []
    current: list[str] = []

    def flush() -> None:
        if not current:
            return
        m = _ENTRY.match("\n".join(current))
        if m:
            entries.append(LogEntry(int(m["pid"]), m["app"], m["level"], m["message"]))
        current.clear()

    for line in text.split("\n"):
        if line.startswith("\t") and current:
            current.append(line[1:])
        else:
            flush()
            if line:
                current.append(line)
    flush()
    return entries


class PgCluster:
    """Handle on the running test cluster."""

    host = "127.0.0.1"
    dbname = "postgres"
    admin_user = ADMIN_USER

    def __init__(self, bin_dir: Path, workdir: Path, port: int, admin_password: Sensitive[str]):
        self.bin_dir = bin_dir
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.log_path = workdir / "server.log"
        self.port = port
        self.admin_password = admin_password

    # -- the log ----------------------------------------------------------------------------

    def log_text(self) -> str:
        return self.log_path.read_bytes().decode("utf-8", errors="replace")

    def log_mark(self) -> int:
        """A position in the log; pass it to :meth:`entries_since`."""
        return self.log_path.stat().st_size

    def entries_since(self, mark: int, app: str | None = None) -> list[LogEntry]:
        with self.log_path.open("rb") as fh:
            fh.seek(mark)
            text = fh.read().decode("utf-8", errors="replace")
        return [e for e in parse_log(text) if app is None or e.app == app]

    def statements_since(self, mark: int, app: str) -> list[str]:
        return [s for e in self.entries_since(mark, app) if (s := e.statement) is not None]

    # -- superuser SQL (Unix socket as postgres) -------------------------------------------

    def superuser_connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=str(self.workdir),
            port=self.port,
            user="postgres",
            dbname=dbname,
            autocommit=True,
            application_name=FIXTURE_APP,
            connect_timeout=10,
        )

    def sql(
        self,
        query: str | sql.Composable,
        params: Sequence[Any] | None = None,
        dbname: str = "postgres",
    ) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser; the rows it returns (empty if none)."""
        with self.superuser_connect(dbname) as conn:
            cur = conn.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def roles(self) -> set[str]:
        return {r[0] for r in self.sql("SELECT rolname FROM pg_catalog.pg_roles")}

    def role_exists(self, name: str) -> bool:
        return bool(self.sql("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", [name]))

    def create_role(self, name: str, *options: str) -> None:
        """``CREATE ROLE <name> [options]``; options are fixed keywords, never user input."""
        stmt = sql.SQL("CREATE ROLE {} {}").format(sql.Identifier(name), sql.SQL(" ".join(options)))
        self.sql(stmt)

    def drop_role(self, name: str) -> None:
        self.sql(
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity"
            " WHERE usename = %s",
            [name],
        )
        if self.role_exists(name):
            self.sql(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        self.sql(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))

    # -- TCP logins ---------------------------------------------------------------------------

    def connect_as(
        self,
        user: str,
        password: Sensitive[str],
        dbname: str | None = None,
        application_name: str = "pgcluster-client",
    ) -> psycopg.Connection[Any]:
        """A TCP (SCRAM) session as ``user``; raises psycopg.OperationalError if refused."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=user,
            password=password.reveal(),
            dbname=dbname or self.dbname,
            sslmode="disable",
            connect_timeout=10,
            autocommit=True,
            application_name=application_name,
        )

    def can_login(self, user: str, password: Sensitive[str]) -> bool:
        """Does ``user``/``password`` log in over TCP? False only if the server says no."""
        try:
            with self.connect_as(user, password) as conn:
                conn.execute("SELECT 1")
                return True
        except psycopg.OperationalError as exc:
            if exc.sqlstate is not None and exc.sqlstate.startswith("28"):
                return False
            text = str(exc)
            if "authentication failed" in text or "not permitted to log in" in text:
                return False
            raise

    def target(self, name: str = "pgtest", **options: Any) -> TargetAccess:
        """A :class:`TargetAccess` for this cluster as ``vault_admin``."""
        opts: dict[str, Any] = {
            "kind": "postgres",
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "sslmode": "disable",
        }
        opts.update(options)
        return TargetAccess(
            name=name, options=opts, admin_user=self.admin_user, admin_secret=self.admin_password
        )

    @contextlib.contextmanager
    def tls_only(self, *users: str) -> Iterator[None]:
        """While the block runs, TCP logins of ``users`` are refused unless over TLS
        (``hostnossl ... reject`` ahead of ``pg_hba.conf``'s other lines); ``users`` are
        plain names (no quoting in ``pg_hba.conf``)."""
        assert all(re.fullmatch(r"[a-z0-9_]+", user) for user in users), users
        hba = self.data_dir / "pg_hba.conf"
        before = hba.read_text()
        hba.write_text("".join(f"hostnossl all {u} 127.0.0.1/32 reject\n" for u in users) + before)
        self._reload_hba(users[0], refused=True)
        try:
            yield
        finally:
            hba.write_text(before)
            self._reload_hba(users[0], refused=False)

    def _reload_hba(self, user: str, refused: bool) -> None:
        """Reload the configuration and wait (bounded) until a plain TCP login of ``user`` is
        refused by ``pg_hba.conf`` or no longer is: the postmaster reloads when it gets to it."""
        self.sql("SELECT pg_catalog.pg_reload_conf()")
        deadline = time.monotonic() + 10
        while True:
            try:
                self.connect_as(user, Sensitive("not-the-password")).close()
                by_hba = False
            except psycopg.OperationalError as exc:
                by_hba = "pg_hba.conf rejects connection" in str(exc)
            if by_hba == refused:
                return
            assert time.monotonic() < deadline, f"pg_hba.conf not reloaded (refused={refused})"
            time.sleep(0.05)

    # -- process ------------------------------------------------------------------------------

    def postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except FileNotFoundError:
            return None
        return int(first) if first.strip().isdigit() else None


def _as_postgres(cmd: list[str]) -> list[str]:
    """Run ``cmd`` as the postgres system user when we are root (initdb refuses root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    return not _pid_alive(pid)


def _run(
    cmd: list[str], timeout: float = 120.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env
    )


def _stop(cluster: PgCluster) -> None:
    pid = cluster.postmaster_pid()
    if cluster.data_dir.exists():
        _run(
            _as_postgres(
                [
                    str(cluster.bin_dir / "pg_ctl"),
                    "-D",
                    str(cluster.data_dir),
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "30",
                    "stop",
                ]
            ),
            timeout=60,
        )
    if pid is not None and not _wait_gone(pid, 15.0):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 10.0)


def start_cluster(
    bin_dir: Path,
    extra: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    tls: bool = False,
) -> PgCluster:
    """initdb + start a private cluster; the caller must :func:`_stop` it and remove its dir.

    ``extra``: postgresql.conf settings over the defaults below (values as written there);
    ``env``: the server's environment; ``tls``: TLS offered (``ssl = on``, a self-signed
    certificate), to clients that ask for it."""
    workdir = Path(tempfile.mkdtemp(prefix="jitvault-pg-"))
    workdir.chmod(0o700)
    leftovers.mark_dir(workdir)  # a killed run's cluster is stopped by the next run
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres", "postgres")
    data_dir = workdir / "data"
    init = _run(
        _as_postgres(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-locale",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ]
        )
    )
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed: {init.stderr[-2000:]}")
    # Only the socket (0700 dir: root and postgres) trusts; TCP is SCRAM, loopback only.
    (data_dir / "pg_hba.conf").write_text(
        "local all postgres trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
    )
    with (data_dir / "postgresql.conf").open("a") as fh:
        fh.write("\ninclude 'jitvault_test.conf'\n")
    offered = {"ssl": "off"}
    if tls:
        cert, key = data_dir / "server.crt", data_dir / "server.key"
        ensure_self_signed(cert, key, ["127.0.0.1"])
        if os.geteuid() == 0:
            for made in (cert, key):
                shutil.chown(made, "postgres", "postgres")
        offered = {"ssl": "on", "ssl_cert_file": f"'{cert}'", "ssl_key_file": f"'{key}'"}
    password = Sensitive(secrets.token_urlsafe(24))
    last = ""
    for _attempt in range(3):  # a free port may be taken between probe and bind: retry
        port = free_port()
        settings = (
            {
                "listen_addresses": "'127.0.0.1'",
                "port": str(port),
                "unix_socket_directories": f"'{workdir}'",
                "password_encryption": "'scram-sha-256'",
                "log_statement": "'all'",
                "logging_collector": "off",
                "log_destination": "'stderr'",
                "log_line_prefix": "'%m [%p] %a: '",
                "log_timezone": "'UTC'",
                "lc_messages": "'C'",
                "fsync": "off",
                "synchronous_commit": "off",
                "full_page_writes": "off",
                "max_connections": "60",
                "shared_buffers": "'32MB'",
            }
            | offered
            | (extra or {})
        )
        (data_dir / "jitvault_test.conf").write_text(
            "".join(f"{k} = {v}\n" for k, v in settings.items())
        )
        if os.geteuid() == 0:
            shutil.chown(data_dir / "jitvault_test.conf", "postgres", "postgres")
            shutil.chown(data_dir / "pg_hba.conf", "postgres", "postgres")
        cluster = PgCluster(bin_dir, workdir, port, password)
        started = _run(
            _as_postgres(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data_dir),
                    "-l",
                    str(cluster.log_path),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            timeout=90,
            env=env,
        )
        if started.returncode == 0:
            break
        last = started.stdout[-1000:] + started.stderr[-1000:]
        with contextlib.suppress(FileNotFoundError):
            last += cluster.log_text()[-2000:]
        _stop(cluster)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(f"postgres did not start: {last}")
    try:
        verifier = scram_verifier(password)
        cluster.sql(
            sql.SQL("CREATE ROLE {} SUPERUSER LOGIN PASSWORD {}").format(
                sql.Identifier(ADMIN_USER), sql.Literal(verifier.reveal())
            )
        )
    except BaseException:
        _stop(cluster)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return cluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL cluster (see the module docstring), stopped by pid afterwards."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin)")
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres system user")
    cluster = start_cluster(bin_dir, tls=True)  # targets ask for TLS or not, as they say
    try:
        yield cluster
    finally:
        _stop(cluster)
        shutil.rmtree(cluster.workdir, ignore_errors=True)


__all__ = ["LogEntry", "PgCluster", "find_pg_bin", "parse_log", "pg_cluster", "start_cluster"]

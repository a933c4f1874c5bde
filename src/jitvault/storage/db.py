"""Engines and transactions: SQLite (WAL) by default, PostgreSQL (psycopg 3) by URL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from jitvault.errors import ConfigError, Unavailable


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and use the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Database:
    """One engine and the transaction discipline every repository relies on."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = normalize_url(url)
        try:
            parsed = make_url(self.url)
        except Exception as exc:
            raise ConfigError("database_url is not a valid database URL") from exc
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ConfigError(
                f"unsupported database {self.dialect!r}", hint="use sqlite:/// or postgresql://"
            )
        # hide_parameters: a driver error in a traceback must never print a bound value
        kwargs: dict[str, Any] = {"echo": echo, "future": True, "hide_parameters": True}
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=20)
        self.engine: Engine = create_engine(self.url, **kwargs)
        # SQLite has one writer at a time; queueing this process's writers on a lock is fairer
        # (and far shorter at p99) than letting them poll the file lock under busy_timeout.
        # PostgreSQL needs no such lock.
        self._writer: AbstractContextManager[object] = (
            threading.RLock() if self.dialect == "sqlite" else nullcontext()
        )
        if self.dialect == "sqlite":
            _sqlite_discipline(self.engine)

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction: committed on success, rolled back on any exception."""
        try:
            with self._writer, self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise Unavailable(
                "the database is unavailable", hint="check database_url and that it is running"
            ) from exc

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction. On SQLite it is a deferred one, which in WAL mode reads a
        consistent snapshot without waiting for writers (a key rotation's re-encryption, say)."""
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(jitvault_read=True)
                with conn.begin():
                    yield conn
        except OperationalError as exc:
            raise Unavailable(
                "the database is unavailable", hint="check database_url and that it is running"
            ) from exc

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_discipline(engine: Engine) -> None:
    """WAL, foreign keys, and BEGIN IMMEDIATE for writes so two writers never deadlock on a
    lock upgrade (reads begin deferred, see :meth:`Database.read`)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        read_only = conn.get_execution_options().get("jitvault_read", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


__all__ = ["Database", "normalize_url"]

"""Credential lifecycle of PostgreSQL targets: verify, rotate, ephemeral roles, elevations.

Every operation runs on a connection (psycopg 3, async, autocommit) as the target's
administrator, taken from a small pool of idle ones (:mod:`.adminpool`) or opened for it, is
idempotent and safe to retry, and is bounded in time.

Rules kept here:

* Names are validated (not empty, no NUL or control character, at most 63 UTF-8 bytes: rejected,
  never truncated) and always sent as quoted identifiers (:class:`psycopg.sql.Identifier`);
  values are parameters or :class:`psycopg.sql.Literal`. No SQL is built by string formatting.
* Passwords never reach the server: ``ALTER/CREATE ROLE ... PASSWORD`` carries the SCRAM-SHA-256
  verifier computed here, so the server's statement log shows only the verifier.
* Errors carry the SQLSTATE and the name of its condition, never the server's message (it can
  echo statement text) and never a chained psycopg exception (a failed connection's ``pgconn``
  repr shows the password): every :class:`TargetRejected` is raised outside the ``except`` block.
* Ephemeral roles are marked (``COMMENT ON ROLE``) when created; an existing role without the
  mark is neither taken over by :func:`create_account` nor dropped by :func:`drop_account`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import psycopg
from psycopg import sql

from jitvault.domain import Sensitive
from jitvault.errors import ValidationError
from jitvault.plugin_api import AccountTemplate, TargetRejected
from jitvault.plugin_api.scram import scram_verifier
from jitvault_postgres import protocol as pg_protocol
from jitvault_postgres import upstream as up
from jitvault_postgres.adminpool import new_pool

T = TypeVar("T")

#: PostgreSQL's NAMEDATALEN - 1: longer identifiers are rejected here, never truncated
MAX_IDENTIFIER_BYTES = 63
CONNECT_TIMEOUT_SECONDS = 10
#: upper bound of one whole operation (connect + statements), client side
OPERATION_TIMEOUT_SECONDS = 60.0
#: how long pg_terminate_backend waits for each backend to exit (PostgreSQL 14+), in ms
TERMINATE_WAIT_MS = 5000
APPLICATION_NAME = "jitvault"
#: the comment create_account puts on the roles it makes; drop/re-create require it
EPHEMERAL_MARK = "jitvault ephemeral account"
#: role names PostgreSQL's grammar treats as keywords even when quoted
RESERVED_ROLE_NAMES = frozenset({"public", "none"})
ON_DROP_CHOICES = ("drop_owned", "reassign_owned")

#: idle admin connections kept between operations (one pool per process)
ADMIN_POOL = new_pool()
#: set while an operation runs again after a pooled connection was found dead: no pool then
_FRESH: contextvars.ContextVar[bool] = contextvars.ContextVar("jitvault_pg_fresh", default=False)

# SQLSTATE classes and codes after which trying again later may succeed
_RETRYABLE_CLASSES = ("08", "53", "57", "58", "40")
_RETRYABLE_CODES = frozenset({"55P03", "55006", "25006"})


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to reach one target (built from validated target options)."""

    target_name: str
    host: str
    port: int
    dbname: str
    sslmode: str
    admin_user: str | None
    admin_secret: Sensitive[str] | None


# -- names ------------------------------------------------------------------------------------


def validate_identifier(name: str, what: str = "role name") -> str:
    """A PostgreSQL identifier we can quote exactly: 1-63 UTF-8 bytes, no NUL or control char."""
    if not isinstance(name, str) or not name:
        raise ValidationError(f"empty {what}", hint="names are 1-63 bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValidationError(
            f"{what} contains a NUL or control character", hint="use printable characters"
        )
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(
            f"{what} is not valid Unicode text", hint="no lone surrogates"
        ) from None
    if size > MAX_IDENTIFIER_BYTES:
        raise ValidationError(
            f"{what} is {size} bytes long",
            hint=f"at most {MAX_IDENTIFIER_BYTES} bytes; names are rejected, never truncated",
        )
    return name


def validate_role(name: str, what: str = "role name") -> str:
    """An existing role to grant or revoke (``pg_*`` predefined roles are fine)."""
    validate_identifier(name, what)
    if name in RESERVED_ROLE_NAMES:
        raise ValidationError(f"{what} is reserved by PostgreSQL", hint="not 'public' or 'none'")
    return name


def validate_new_role(name: str, what: str = "account name") -> str:
    """A role jitvault may create or drop: also not ``pg_*`` (reserved by PostgreSQL)."""
    validate_role(name, what)
    if name.startswith("pg_"):
        raise ValidationError(f"{what} is reserved by PostgreSQL", hint="no 'pg_' prefix")
    return name


def valid_until_literal(expires_at: datetime) -> str:
    """``VALID UNTIL`` text in UTC, to the second (a naive datetime is taken as UTC)."""
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    return expires_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S+00")


# -- errors -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Failure:
    """What we keep of a psycopg error: no message, no statement, no connection object."""

    sqlstate: str | None
    condition: str
    retryable: bool

    def rejected(self, ep: Endpoint, op: str) -> TargetRejected:
        hint = f"SQLSTATE {self.sqlstate}: {self.condition}" if self.sqlstate else self.condition
        return TargetRejected(
            f"postgres target {ep.target_name!r}: {op} failed",
            hint=hint,
            retryable=self.retryable,
        )


def _retryable(sqlstate: str | None) -> bool:
    if sqlstate is None:
        return True
    return sqlstate.startswith(_RETRYABLE_CLASSES) or sqlstate in _RETRYABLE_CODES


def _failure_of(exc: psycopg.Error) -> _Failure:
    state = exc.sqlstate
    if state is None and isinstance(exc, psycopg.OperationalError):
        return _connect_failure(exc)
    return _Failure(state, type(exc).__name__, _retryable(state))


ConnectKind = Literal["auth", "config", "unavailable"]


def _connect_kind(exc: psycopg.Error) -> ConnectKind:
    """Classify a failed connection.

    libpq does not expose the SQLSTATE of a refused connection (psycopg's ``sqlstate`` is None),
    so this reads the server's FATAL text, which is English unless the server's lc_messages says
    otherwise: a refusal in another language counts as "config" (TargetRejected, not retryable),
    never as a successful login. A failure without a server FATAL (refused, reset, timeout) counts
    as "unavailable" (retryable). The text is only inspected, never kept or passed on.
    """
    if exc.sqlstate is not None:
        if exc.sqlstate.startswith("28"):
            return "auth"
        return "unavailable" if _retryable(exc.sqlstate) else "config"
    text = str(exc)
    if (
        "password authentication failed" in text
        or "is not permitted to log in" in text
        or "no pg_hba.conf entry" in text
        or "authentication failed for user" in text
    ):
        return "auth"
    if "FATAL:" in text and not any(
        s in text
        for s in (
            "too many connections",
            "starting up",
            "shutting down",
            "in recovery",
            "not yet accepting connections",
            "remaining connection slots",
        )
    ):
        return "config"
    return "unavailable"


def _connect_failure(exc: psycopg.Error) -> _Failure:
    kind = _connect_kind(exc)
    if kind == "auth":
        return _Failure(exc.sqlstate, "login refused", retryable=False)
    if kind == "config":
        return _Failure(exc.sqlstate, "connection refused by the server", retryable=False)
    return _Failure(exc.sqlstate, "target unreachable", retryable=True)


async def _guarded(ep: Endpoint, op: str, body: Callable[[], Awaitable[T]]) -> T:
    """Run ``body`` with a time bound; psycopg errors become :class:`TargetRejected`.

    If a pooled connection turns out to be dead, ``body`` runs once more on new connections
    (every operation is idempotent). The new exception is raised after the ``except`` block so
    it chains nothing.
    """
    failure: _Failure
    try:
        async with asyncio.timeout(OPERATION_TIMEOUT_SECONDS):
            try:
                return await body()
            except _Stale:
                token = _FRESH.set(True)
                try:
                    return await body()
                finally:
                    _FRESH.reset(token)
    except psycopg.Error as exc:
        failure = _failure_of(exc)
    except TimeoutError:
        failure = _Failure(None, "timed out", retryable=True)
    except (OSError, _Stale):
        failure = _Failure(None, "network error", retryable=True)
    raise failure.rejected(ep, op)


# -- connections ------------------------------------------------------------------------------


async def _connect(
    ep: Endpoint, user: str, password: Sensitive[str] | None, dbname: str
) -> psycopg.AsyncConnection[Any]:
    params: dict[str, Any] = {
        "host": ep.host,
        "port": ep.port,
        "dbname": dbname,
        "user": user,
        "sslmode": ep.sslmode,
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "application_name": APPLICATION_NAME,
    }
    if password is not None:
        return await psycopg.AsyncConnection.connect(
            autocommit=True, prepare_threshold=None, password=password.reveal(), **params
        )
    return await psycopg.AsyncConnection.connect(autocommit=True, prepare_threshold=None, **params)


class _Stale(Exception):
    """A pooled admin connection turned out to be dead (the server closed it while idle)."""


@asynccontextmanager
async def _admin(
    ep: Endpoint, dbname: str | None = None
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """An admin connection to ``dbname`` (the target's database if None): a pooled one for the
    target's database (see :mod:`.adminpool`), a new one, closed after use, for any other."""
    if not ep.admin_user:
        raise TargetRejected(
            f"postgres target {ep.target_name!r} has no administrator account",
            hint="set the target's admin user and secret",
        )
    db = dbname or ep.dbname
    key = ADMIN_POOL.key(ep) if db == ep.dbname and not _FRESH.get() else None
    conn = None
    if key is not None:
        conn, stale = ADMIN_POOL.take(key, ep.target_name)
        for old in stale:
            await old.close()
    reused = conn is not None
    if conn is None:
        conn = await _connect(ep, ep.admin_user, ep.admin_secret, db)
    done = False
    try:
        yield conn
        done = True
    except psycopg.OperationalError:
        if reused and conn.broken:
            raise _Stale() from None
        raise
    finally:
        if done and key is not None:
            conn = ADMIN_POOL.give(key, conn)
        if conn is not None:
            await conn.close()


async def _role_mark(conn: psycopg.AsyncConnection[Any], username: str) -> tuple[bool, str | None]:
    """``(exists, comment)`` of the role ``username``."""
    cur = await conn.execute(
        "SELECT pg_catalog.shobj_description(oid, 'pg_authid')"
        " FROM pg_catalog.pg_roles WHERE rolname = %s",
        [username],
    )
    row = await cur.fetchone()
    return (row is not None, row[0] if row is not None else None)


def _not_ours(ep: Endpoint, op: str) -> TargetRejected:
    return TargetRejected(
        f"postgres target {ep.target_name!r}: {op} refused",
        hint="a role of that name exists and was not created by jitvault",
    )


# -- operations -------------------------------------------------------------------------------


async def verify(ep: Endpoint, username: str, secret: Sensitive[str]) -> bool:
    """Log in as ``username`` with ``secret`` (no statement is run): True, False if refused.

    The login is the session proxy's own (:func:`.upstream.login`): the same TLS rules as a
    session's, and a refusal told by its SQLSTATE (class 28, or a failed SCRAM proof), so a
    server whose ``lc_messages`` is not English is understood alike."""
    validate_identifier(username, "account name")
    endpoint = up.Endpoint(host=ep.host, port=ep.port, sslmode=ep.sslmode, dbname=ep.dbname)
    params = {"user": username, "database": ep.dbname, "application_name": APPLICATION_NAME}
    try:
        async with asyncio.timeout(OPERATION_TIMEOUT_SECONDS):
            upstream = await up.login(endpoint, username, secret, params)
        await _say_goodbye(upstream)
        return True
    except up.UpstreamRefused:
        return False
    except up.UpstreamFailed as exc:
        if exc.sqlstate is not None and exc.sqlstate.startswith("28"):
            return False  # e.g. 28000 after the proof: the role may not log in (NOLOGIN)
        if exc.sqlstate is None:
            failure = _Failure(None, "target unreachable", retryable=True)
        else:
            condition = "connection refused by the server"
            failure = _Failure(exc.sqlstate, condition, _retryable(exc.sqlstate))
    except (TimeoutError, OSError):
        failure = _Failure(None, "target unreachable", retryable=True)
    raise failure.rejected(ep, "verify")


async def _say_goodbye(upstream: up.Upstream) -> None:
    """Terminate a verification login politely (the server logs no broken connection)."""
    with contextlib.suppress(Exception):
        upstream.wire.write(pg_protocol.terminate())
    upstream.close()


async def rotate(ep: Endpoint, username: str, new: Sensitive[str]) -> None:
    """``ALTER ROLE <user> PASSWORD '<SCRAM verifier of new>'`` (idempotent)."""
    validate_identifier(username, "account name")
    verifier = scram_verifier(new)
    stmt = sql.SQL("ALTER ROLE {} PASSWORD {}").format(
        sql.Identifier(username), sql.Literal(verifier.reveal())
    )

    async def body() -> None:
        async with _admin(ep) as conn:
            await conn.execute(stmt)

    await _guarded(ep, "rotate", body)


async def create_account(
    ep: Endpoint,
    template: AccountTemplate,
    username: str,
    secret: Sensitive[str],
    expires_at: datetime,
) -> None:
    """Create (or, if jitvault made it, update) the login role and grant the template's roles.

    One round trip when the role is new: ``CREATE ROLE ... LOGIN PASSWORD <verifier> VALID
    UNTIL``, the jitvault mark (``COMMENT ON ROLE``) and a ``GRANT`` per role, sent as one query
    (one implicit transaction: all or nothing). If the role exists (42710), its mark is checked
    and ``ALTER ROLE`` with the same options plus the grants are sent the same way.
    """
    validate_new_role(username)
    roles = [validate_role(r, "template role") for r in template.grant_roles]
    user = sql.Identifier(username)
    password = sql.Literal(scram_verifier(secret).reveal())
    until = sql.Literal(valid_until_literal(expires_at))
    grants = [sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), user) for role in roles]
    create = sql.SQL("; ").join(
        [
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} VALID UNTIL {}").format(
                user, password, until
            ),
            sql.SQL("COMMENT ON ROLE {} IS {}").format(user, sql.Literal(EPHEMERAL_MARK)),
            *grants,
        ]
    )
    update = sql.SQL("; ").join(
        [
            sql.SQL("ALTER ROLE {} LOGIN PASSWORD {} VALID UNTIL {}").format(user, password, until),
            *grants,
        ]
    )

    async def body() -> None:
        async with _admin(ep) as conn:
            try:
                await conn.execute(create)
                return
            except psycopg.errors.DuplicateObject:
                pass  # the role exists: ours to update only if it carries the mark
            _, mark = await _role_mark(conn, username)
            if mark != EPHEMERAL_MARK:
                raise _not_ours(ep, "create_account")
            await conn.execute(update)

    await _guarded(ep, "create_account", body)


def _on_drop_statements(template: AccountTemplate, username: str) -> list[sql.Composed]:
    user = sql.Identifier(username)
    if template.on_drop == "drop_owned":
        return [sql.SQL("DROP OWNED BY {}").format(user)]
    if template.on_drop == "reassign_owned":
        if not template.reassign_to:
            raise ValidationError(
                "template says reassign_owned but names no role", hint="set reassign_to"
            )
        heir = sql.Identifier(validate_role(template.reassign_to, "reassign_to role"))
        # REASSIGN moves ownership; DROP OWNED then removes the privileges granted to the role
        return [
            sql.SQL("REASSIGN OWNED BY {} TO {}").format(user, heir),
            sql.SQL("DROP OWNED BY {}").format(user),
        ]
    raise ValidationError(
        "unknown on_drop in account template", hint=f"use one of {', '.join(ON_DROP_CHOICES)}"
    )


def _terminate(server_version: int, username: str) -> sql.Composed:
    """End the role's sessions (waiting for each to exit, on PostgreSQL 14+)."""
    wait = sql.SQL(", {}").format(sql.Literal(TERMINATE_WAIT_MS))
    return sql.SQL(
        "SELECT pg_catalog.pg_terminate_backend(pid{}) FROM pg_catalog.pg_stat_activity"
        " WHERE usename = {} AND pid <> pg_catalog.pg_backend_pid()"
    ).format(wait if server_version >= 140000 else sql.SQL(""), sql.Literal(username))


async def _dependent_databases(conn: psycopg.AsyncConnection[Any], username: str) -> list[str]:
    """Databases (that accept connections) holding objects or privileges of ``username``."""
    cur = await conn.execute(
        "SELECT DISTINCT d.datname FROM pg_catalog.pg_shdepend s"
        " JOIN pg_catalog.pg_database d ON d.oid = s.dbid"
        " JOIN pg_catalog.pg_roles r ON r.oid = s.refobjid"
        " WHERE s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass"
        " AND r.rolname = %s AND d.datallowconn ORDER BY 1",
        [username],
    )
    return [str(row[0]) for row in await cur.fetchall()]


#: the role's mark and the other databases where it owns or holds something, in one query
_ROLE_AND_DATABASES = (
    "SELECT pg_catalog.shobj_description(r.oid, 'pg_authid'), ARRAY("
    "SELECT DISTINCT d.datname::text FROM pg_catalog.pg_shdepend s"
    " JOIN pg_catalog.pg_database d ON d.oid = s.dbid"
    " WHERE s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass AND s.refobjid = r.oid"
    " AND d.datallowconn AND d.datname <> pg_catalog.current_database() ORDER BY 1)"
    " FROM pg_catalog.pg_roles r WHERE r.rolname = %s"
)


async def drop_account(ep: Endpoint, template: AccountTemplate, username: str) -> None:
    """End the role's sessions and drop it with what it owns; no error if it is gone.

    ``ALTER ROLE ... NOLOGIN`` first (committed: no new session can start), then, as one query
    (one transaction), ``pg_terminate_backend`` for its sessions, per ``template.on_drop``
    ``DROP OWNED BY`` (or ``REASSIGN OWNED BY`` + ``DROP OWNED BY``) and ``DROP ROLE IF
    EXISTS``: three round trips in all. When the role owns or holds something in another
    database (or comes to, before its sessions end: the ``DROP ROLE`` then fails and is rolled
    back), the cleanup runs in every such database before ``DROP ROLE``.
    """
    validate_new_role(username)
    cleanup = _on_drop_statements(template, username)
    user = sql.Identifier(username)
    drop_role = sql.SQL("DROP ROLE IF EXISTS {}").format(user)

    async def body() -> None:
        async with _admin(ep) as conn:
            cur = await conn.execute(_ROLE_AND_DATABASES, [username])
            row = await cur.fetchone()
            terminate = _terminate(conn.info.server_version, username)
            if row is None:
                await conn.execute(terminate)  # sessions can outlive a dropped role
                return
            mark, others = row[0], [str(d) for d in row[1]]
            if mark != EPHEMERAL_MARK:
                raise _not_ours(ep, "drop_account")
            await conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(user))
            if not others:
                try:
                    await conn.execute(sql.SQL("; ").join([terminate, *cleanup, drop_role]))
                    return
                except psycopg.errors.DependentObjectsStillExist:
                    pass  # something appeared in another database meanwhile
            await conn.execute(sql.SQL("; ").join([terminate, *cleanup]))
            others = [d for d in await _dependent_databases(conn, username) if d != ep.dbname]
        for dbname in others:
            async with _admin(ep, dbname) as other:
                await other.execute(sql.SQL("; ").join(cleanup))
        async with _admin(ep) as conn:
            await conn.execute(drop_role)

    await _guarded(ep, "drop_account", body)


async def elevate(ep: Endpoint, username: str, role: str, expires_at: datetime) -> None:
    """``GRANT <role> TO <user>`` (idempotent). PostgreSQL memberships do not expire by
    themselves: the core revokes at ``expires_at``."""
    validate_identifier(username, "account name")
    validate_role(role)
    stmt = sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(username))

    async def body() -> None:
        async with _admin(ep) as conn:
            await conn.execute(stmt)

    await _guarded(ep, "elevate", body)


async def revoke(ep: Endpoint, username: str, role: str) -> None:
    """``REVOKE <role> FROM <user>``; no error if not a member, or if either role is gone."""
    validate_identifier(username, "account name")
    validate_role(role)
    stmt = sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(role), sql.Identifier(username))

    async def body() -> None:
        async with _admin(ep) as conn:
            try:
                await conn.execute(stmt)
            except psycopg.errors.UndefinedObject:
                return  # 42704: the user or the role no longer exists: nothing to revoke

    await _guarded(ep, "revoke", body)


async def has_role(ep: Endpoint, username: str, role: str) -> bool:
    """Is ``username`` a direct member of ``role``? (False if either role does not exist.)

    Direct membership only: that is what ``GRANT``/``REVOKE`` add and remove; a membership
    inherited through another role is untouched by either.
    """
    validate_identifier(username, "account name")
    validate_role(role)

    async def body() -> bool:
        async with _admin(ep) as conn:
            cur = await conn.execute(
                "SELECT 1 FROM pg_catalog.pg_auth_members m"
                " JOIN pg_catalog.pg_roles r ON r.oid = m.roleid"
                " JOIN pg_catalog.pg_roles u ON u.oid = m.member"
                " WHERE r.rolname = %s AND u.rolname = %s",
                [role, username],
            )
            return await cur.fetchone() is not None

    return await _guarded(ep, "has_role", body)


__all__ = [
    "APPLICATION_NAME",
    "EPHEMERAL_MARK",
    "MAX_IDENTIFIER_BYTES",
    "Endpoint",
    "create_account",
    "drop_account",
    "elevate",
    "has_role",
    "revoke",
    "rotate",
    "valid_until_literal",
    "validate_identifier",
    "validate_new_role",
    "validate_role",
    "verify",
]

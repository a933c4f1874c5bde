"""The PostgreSQL target plugin's credential lifecycle against a real PostgreSQL server.

Runs on the ``pg_cluster`` fixture (a private cluster with ``log_statement = 'all'``), whatever
``--db`` says. The statement log is read between actions: it proves which statements reached the
server, that names arrived as correctly quoted identifiers, and that no plaintext password did.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from psycopg import sql

from jitvault.domain import Sensitive
from jitvault.errors import ValidationError
from jitvault.plugin_api import AccountTemplate, TargetRejected
from jitvault_postgres import PostgresTarget
from jitvault_postgres.lifecycle import APPLICATION_NAME, EPHEMERAL_MARK
from tests.pgcluster import PgCluster
from tests.support import free_port

T = TypeVar("T")
PLUGIN = PostgresTarget()
VERIFIER = r"'SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+'"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def secret() -> Sensitive[str]:
    return Sensitive(f"pw-{secrets.token_urlsafe(24)}")


def unique(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


def later(hours: int = 1) -> datetime:
    return (datetime.now(UTC) + timedelta(hours=hours)).replace(microsecond=0)


def qi(name: str) -> str:
    """The quoted identifier PostgreSQL expects (our own oracle, independent of psycopg)."""
    return '"' + name.replace('"', '""') + '"'


def ql(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def ql_any(value: str) -> str:
    """A string literal as psycopg writes it: with a backslash inside, an escape string
    (`` E'...'``, backslashes doubled: whatever standard_conforming_strings says)."""
    if "\\" not in value:
        return ql(value)
    return " E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def plugin_statements(cluster: PgCluster, mark: int) -> list[str]:
    return cluster.statements_since(mark, APPLICATION_NAME)


def make_login_role(cluster: PgCluster, name: str, password: Sensitive[str]) -> None:
    """A plain login role the way an operator makes one (no jitvault mark)."""
    cluster.sql(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(password.reveal())
        )
    )


def is_member(cluster: PgCluster, user: str, role: str) -> bool:
    rows = cluster.sql("SELECT pg_catalog.pg_has_role(%s, %s, 'MEMBER')", [user, role])
    return bool(rows[0][0])


# -- verify -----------------------------------------------------------------------------------


def test_verify_is_true_for_the_right_password_and_false_for_wrong_or_unknown(
    pg_cluster: PgCluster,
) -> None:
    target = pg_cluster.target()
    user, password = unique("verify"), secret()
    make_login_role(pg_cluster, user, password)
    try:
        mark = pg_cluster.log_mark()
        assert run(PLUGIN.verify(target, user, password)) is True
        assert run(PLUGIN.verify(target, user, secret())) is False
        assert run(PLUGIN.verify(target, unique("nobody"), password)) is False
        assert plugin_statements(pg_cluster, mark) == []  # a login, not a query
    finally:
        pg_cluster.drop_role(user)


def test_verify_of_an_unreachable_target_raises_a_retryable_rejection(
    pg_cluster: PgCluster,
) -> None:
    target = pg_cluster.target(port=free_port())  # nothing listens there
    with pytest.raises(TargetRejected) as info:
        run(PLUGIN.verify(target, "someone", secret()))
    assert info.value.retryable is True


def test_a_refused_admin_login_is_not_retryable_and_the_error_carries_no_secret(
    pg_cluster: PgCluster,
) -> None:
    wrong = secret()
    target = pg_cluster.target()
    target = type(target)(target.name, target.options, target.admin_user, wrong)
    new = secret()
    with pytest.raises(TargetRejected) as info:
        run(PLUGIN.rotate(target, "vault_admin", new))
    exc = info.value
    assert exc.retryable is False
    text = f"{exc} {exc!r} {exc.hint}"
    for value in (wrong.reveal(), new.reveal(), pg_cluster.admin_password.reveal()):
        assert value not in text
    # nothing chained: a psycopg connection error's pgconn repr would show the password
    assert exc.__cause__ is None
    assert exc.__context__ is None


# -- rotate -----------------------------------------------------------------------------------


def test_rotate_replaces_the_password_and_only_its_scram_verifier_reaches_the_server_log(
    pg_cluster: PgCluster,
) -> None:
    target = pg_cluster.target()
    user, old, new = unique("rotate"), secret(), secret()
    make_login_role(pg_cluster, user, old)
    try:
        mark = pg_cluster.log_mark()
        run(PLUGIN.rotate(target, user, new))
        statements = plugin_statements(pg_cluster, mark)
        assert len(statements) == 1
        assert re.fullmatch(f"ALTER ROLE {re.escape(qi(user))} PASSWORD {VERIFIER}", statements[0])
        assert not pg_cluster.can_login(user, old)
        assert pg_cluster.can_login(user, new)
        assert run(PLUGIN.verify(target, user, new)) is True

        run(PLUGIN.rotate(target, user, new))  # idempotent: the same password again
        assert pg_cluster.can_login(user, new)
        assert new.reveal() not in pg_cluster.log_text()
        stored = pg_cluster.sql("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [user])
        assert str(stored[0][0]).startswith("SCRAM-SHA-256$4096:")
    finally:
        pg_cluster.drop_role(user)


def test_rotate_of_a_missing_role_is_rejected_with_its_sqlstate_and_not_retryable(
    pg_cluster: PgCluster,
) -> None:
    new = secret()
    with pytest.raises(TargetRejected) as info:
        run(PLUGIN.rotate(pg_cluster.target(), unique("missing"), new))
    assert info.value.retryable is False
    assert "42704" in str(info.value)
    assert new.reveal() not in str(info.value)
    assert info.value.__context__ is None


# -- TLS ----------------------------------------------------------------------------------------


def test_a_target_that_asks_for_tls_is_reached_over_tls_by_every_operation(
    pg_cluster: PgCluster,
) -> None:
    """``sslmode=require``: the admin's connections (rotate, an ephemeral role made and
    dropped, an elevation given and taken back) and the account's own login (verify) all go
    over TLS. While the test runs the cluster refuses these roles any other way, which the
    same target with ``sslmode=disable`` shows."""
    admin, admin_password = unique("tls_admin"), secret()
    user, password, new = unique("tls_user"), secret(), secret()
    ephemeral, role = unique("tls_eph"), unique("tls_role")
    make_login_role(pg_cluster, admin, admin_password)
    pg_cluster.sql(sql.SQL("ALTER ROLE {} SUPERUSER").format(sql.Identifier(admin)))
    make_login_role(pg_cluster, user, password)
    pg_cluster.create_role(role, "NOLOGIN")
    template = AccountTemplate(name="t", grant_roles=(role,))
    over_tls = pg_cluster.target("pgtls", sslmode="require")
    over_tls = type(over_tls)(over_tls.name, over_tls.options, admin, admin_password)
    plain = type(over_tls)(
        over_tls.name, {**over_tls.options, "sslmode": "disable"}, admin, admin_password
    )
    try:
        with pg_cluster.tls_only(admin, user, ephemeral):
            assert run(PLUGIN.verify(over_tls, user, password)) is True
            run(PLUGIN.rotate(over_tls, user, new))
            assert run(PLUGIN.verify(over_tls, user, new)) is True
            run(PLUGIN.create_account(over_tls, template, ephemeral, password, later()))
            assert run(PLUGIN.verify(over_tls, ephemeral, password)) is True
            run(PLUGIN.elevate(over_tls, user, role, later()))
            assert run(PLUGIN.has_role(over_tls, user, role)) is True
            run(PLUGIN.revoke(over_tls, user, role))
            assert not is_member(pg_cluster, user, role)
            run(PLUGIN.drop_account(over_tls, template, ephemeral))
            assert not pg_cluster.role_exists(ephemeral)
            # without TLS the cluster refuses them: the operations above went over TLS
            assert run(PLUGIN.verify(plain, user, new)) is False
            with pytest.raises(TargetRejected):
                run(PLUGIN.rotate(plain, user, secret()))
        assert pg_cluster.can_login(user, new)
    finally:
        for name in (ephemeral, user, role, admin):
            pg_cluster.drop_role(name)


# -- ephemeral accounts -----------------------------------------------------------------------


def test_create_account_makes_a_marked_login_role_with_grants_and_valid_until(
    pg_cluster: PgCluster,
) -> None:
    target = pg_cluster.target()
    reader, writer = unique("reader"), unique('wri"ter')
    pg_cluster.create_role(reader, "NOLOGIN")
    pg_cluster.create_role(writer, "NOLOGIN")
    template = AccountTemplate(name="analyst", grant_roles=(reader, writer))
    user, password, expires = unique("eph"), secret(), later(2)
    try:
        run(PLUGIN.create_account(target, template, user, password, expires))
        assert pg_cluster.can_login(user, password)
        assert is_member(pg_cluster, user, reader)
        assert is_member(pg_cluster, user, writer)
        rows = pg_cluster.sql(
            "SELECT rolvaliduntil, rolcanlogin, rolsuper,"
            " pg_catalog.shobj_description(oid, 'pg_authid')"
            " FROM pg_catalog.pg_roles WHERE rolname = %s",
            [user],
        )
        assert rows == [(expires, True, False, EPHEMERAL_MARK)]
        assert password.reveal() not in pg_cluster.log_text()

        # idempotent: again with a new secret and expiry updates the same role
        password2, expires2 = secret(), later(3)
        run(PLUGIN.create_account(target, template, user, password2, expires2))
        assert not pg_cluster.can_login(user, password)
        assert pg_cluster.can_login(user, password2)
        assert pg_cluster.sql(
            "SELECT rolvaliduntil FROM pg_catalog.pg_roles WHERE rolname = %s", [user]
        ) == [(expires2,)]
        assert is_member(pg_cluster, user, writer)
    finally:
        for name in (user, reader, writer):
            pg_cluster.drop_role(name)


def test_create_account_with_a_past_expiry_makes_a_role_that_cannot_log_in(
    pg_cluster: PgCluster,
) -> None:
    user, password = unique("expired"), secret()
    template = AccountTemplate(name="t")
    try:
        run(PLUGIN.create_account(pg_cluster.target(), template, user, password, later(-1)))
        assert not pg_cluster.can_login(user, password)
    finally:
        pg_cluster.drop_role(user)


def test_create_account_refuses_to_take_over_a_role_jitvault_did_not_create(
    pg_cluster: PgCluster,
) -> None:
    user, password = unique("operator_made"), secret()
    make_login_role(pg_cluster, user, password)
    try:
        with pytest.raises(TargetRejected) as info:
            run(
                PLUGIN.create_account(
                    pg_cluster.target(), AccountTemplate(name="t"), user, secret(), later()
                )
            )
        assert info.value.retryable is False
        assert pg_cluster.can_login(user, password)  # untouched
        with pytest.raises(TargetRejected):
            run(PLUGIN.drop_account(pg_cluster.target(), AccountTemplate(name="t"), user))
        assert pg_cluster.role_exists(user)
    finally:
        pg_cluster.drop_role(user)


def test_drop_account_ends_live_sessions_drops_owned_objects_in_every_database_and_the_role(
    pg_cluster: PgCluster,
) -> None:
    target = pg_cluster.target()
    template = AccountTemplate(name="t", on_drop="drop_owned")
    user, password = unique("dropme"), secret()
    other_db = unique("jv_other")
    pg_cluster.sql(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(other_db)))
    live: psycopg.Connection[Any] | None = None
    try:
        run(PLUGIN.create_account(target, template, user, password, later()))
        for db in ("postgres", other_db):
            pg_cluster.sql(
                sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(user)),
                dbname=db,
            )
            with pg_cluster.connect_as(user, password, dbname=db) as conn:
                conn.execute("CREATE TABLE public.owned_by_ephemeral (id int)")
        live = pg_cluster.connect_as(user, password, application_name="victim")
        live.execute("SELECT 1")

        run(PLUGIN.drop_account(target, template, user))

        assert not pg_cluster.role_exists(user)
        with pytest.raises(psycopg.OperationalError):
            live.execute("SELECT 1")
        assert pg_cluster.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", [user]
        ) == [(0,)]
        for db in ("postgres", other_db):
            assert pg_cluster.sql("SELECT to_regclass('public.owned_by_ephemeral')", dbname=db) == [
                (None,)
            ]
        # again: no error when it is already gone
        run(PLUGIN.drop_account(target, template, user))
    finally:
        if live is not None:
            live.close()
        pg_cluster.drop_role(user)
        pg_cluster.sql(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(other_db))
        )


def test_drop_account_with_reassign_owned_hands_objects_to_the_heir(
    pg_cluster: PgCluster,
) -> None:
    target = pg_cluster.target()
    heir = unique("heir")
    pg_cluster.create_role(heir, "NOLOGIN")
    template = AccountTemplate(name="t", on_drop="reassign_owned", reassign_to=heir)
    user, password = unique("leaver"), secret()
    table = unique("kept")
    try:
        run(PLUGIN.create_account(target, template, user, password, later()))
        pg_cluster.sql(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(user)))
        with pg_cluster.connect_as(user, password) as conn:
            conn.execute(sql.SQL("CREATE TABLE public.{} (id int)").format(sql.Identifier(table)))
        run(PLUGIN.drop_account(target, template, user))
        assert not pg_cluster.role_exists(user)
        owner = pg_cluster.sql(
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'public' AND tablename = %s",
            [table],
        )
        assert owner == [(heir,)]
    finally:
        pg_cluster.sql(sql.SQL("DROP TABLE IF EXISTS public.{}").format(sql.Identifier(table)))
        pg_cluster.drop_role(user)
        pg_cluster.drop_role(heir)


def test_drop_account_template_without_an_heir_is_rejected_before_any_statement(
    pg_cluster: PgCluster,
) -> None:
    mark = pg_cluster.log_mark()
    with pytest.raises(ValidationError):
        run(
            PLUGIN.drop_account(
                pg_cluster.target(), AccountTemplate(name="t", on_drop="reassign_owned"), "x"
            )
        )
    with pytest.raises(ValidationError):
        run(PLUGIN.drop_account(pg_cluster.target(), AccountTemplate(name="t", on_drop="?"), "x"))
    assert plugin_statements(pg_cluster, mark) == []


# -- elevation --------------------------------------------------------------------------------


def test_elevate_and_revoke_change_membership_and_are_safe_to_repeat(
    pg_cluster: PgCluster,
) -> None:
    target = pg_cluster.target()
    user, role = unique("engineer"), unique("dba")
    make_login_role(pg_cluster, user, secret())
    pg_cluster.create_role(role, "NOLOGIN")
    try:
        run(PLUGIN.elevate(target, user, role, later()))
        assert is_member(pg_cluster, user, role)
        run(PLUGIN.elevate(target, user, role, later()))  # idempotent
        assert is_member(pg_cluster, user, role)

        run(PLUGIN.revoke(target, user, role))
        assert not is_member(pg_cluster, user, role)
        run(PLUGIN.revoke(target, user, role))  # already revoked: fine

        run(PLUGIN.elevate(target, user, role, later()))
        pg_cluster.drop_role(role)
        run(PLUGIN.revoke(target, user, role))  # the role is gone: fine
        pg_cluster.drop_role(user)
        run(PLUGIN.revoke(target, user, role))  # both gone: fine
    finally:
        pg_cluster.drop_role(user)
        pg_cluster.drop_role(role)


def test_elevate_of_a_missing_user_is_rejected_and_not_retryable(pg_cluster: PgCluster) -> None:
    role = unique("dba")
    pg_cluster.create_role(role, "NOLOGIN")
    try:
        with pytest.raises(TargetRejected) as info:
            run(PLUGIN.elevate(pg_cluster.target(), unique("ghost"), role, later()))
        assert info.value.retryable is False
        assert "42704" in str(info.value)
    finally:
        pg_cluster.drop_role(role)


# -- names --------------------------------------------------------------------------------------

NOT_IDENTIFIERS = [
    pytest.param("", id="empty"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("x" * 64, id="64-ascii-bytes"),
    pytest.param("é" * 32, id="64-utf8-bytes"),
    pytest.param("line\nbreak", id="newline"),
    pytest.param("\ud800", id="lone-surrogate"),
]


def _every_operation(username: str, role: str, password: Sensitive[str]) -> list[Any]:
    return [
        ("verify", lambda t: PLUGIN.verify(t, username, password)),
        ("rotate", lambda t: PLUGIN.rotate(t, username, password)),
        (
            "create_account",
            lambda t: PLUGIN.create_account(
                t, AccountTemplate(name="t", grant_roles=(role,)), username, password, later()
            ),
        ),
        ("drop_account", lambda t: PLUGIN.drop_account(t, AccountTemplate(name="t"), username)),
        ("elevate", lambda t: PLUGIN.elevate(t, username, role, later())),
        ("revoke", lambda t: PLUGIN.revoke(t, username, role)),
    ]


@pytest.mark.parametrize("bad", NOT_IDENTIFIERS)
def test_names_that_are_not_identifiers_are_rejected_before_any_statement(
    pg_cluster: PgCluster, bad: str
) -> None:
    target = pg_cluster.target()
    before = pg_cluster.roles()
    mark = pg_cluster.log_mark()
    for username, role in ((bad, "pg_monitor"), ("someone", bad)):
        for op, call in _every_operation(username, role, secret()):
            if role == bad and op in ("verify", "rotate", "drop_account"):
                continue  # these take no role
            with pytest.raises(ValidationError):
                run(call(target))
    assert pg_cluster.entries_since(mark, APPLICATION_NAME) == []
    assert pg_cluster.roles() == before


def test_a_name_of_exactly_63_bytes_is_used_whole_not_truncated(pg_cluster: PgCluster) -> None:
    user = "ü" * 30 + secrets.token_hex(1) + "x"  # 60 + 2 + 1 = 63 bytes
    assert len(user.encode()) == 63
    template = AccountTemplate(name="t")
    password = secret()
    try:
        run(PLUGIN.create_account(pg_cluster.target(), template, user, password, later()))
        assert pg_cluster.role_exists(user)
        assert pg_cluster.can_login(user, password)
        run(PLUGIN.drop_account(pg_cluster.target(), template, user))
        assert not pg_cluster.role_exists(user)
    finally:
        pg_cluster.drop_role(user)


def test_reserved_role_names_are_rejected_before_any_statement(pg_cluster: PgCluster) -> None:
    mark = pg_cluster.log_mark()
    template = AccountTemplate(name="t")
    for name in ("public", "none", "pg_monitor", "pg_anything"):
        with pytest.raises(ValidationError):
            run(PLUGIN.create_account(pg_cluster.target(), template, name, secret(), later()))
        with pytest.raises(ValidationError):
            run(PLUGIN.drop_account(pg_cluster.target(), template, name))
    for role in ("public", "none"):
        with pytest.raises(ValidationError):
            run(PLUGIN.elevate(pg_cluster.target(), "someone", role, later()))
    assert plugin_statements(pg_cluster, mark) == []


HOSTILE_FRAGMENTS = [
    '"',
    '""',
    "'",
    ";",
    "$$",
    "$1",
    "%s",
    "{}",
    "\\",
    "\\'",
    "--",
    "/*",
    "*/",
    " ",
    "DROP ROLE vault_admin;",
    "'; DROP ROLE vault_admin; --",
    '"; DROP ROLE vault_admin; --',
    "SELECT",
    "GRANT",
    "user",
    "public",
    "none",
    "pg_",
    "current_user",
    "ALL",
    "E'",
    "U&",
    "é",
    "名前",
    "🙂",
    "\u200b",
    "\x00",
    "\n",
    "x" * 40,
]

# names PostgreSQL accepts as quoted identifiers (most examples) ...
printable_hostile_names = st.lists(
    st.one_of(
        st.sampled_from([f for f in HOSTILE_FRAGMENTS if f.isprintable() or f == "\u200b"]),
        st.text(st.characters(min_codepoint=32, exclude_categories=("Cs", "Cc")), max_size=6),
    ),
    min_size=1,
    max_size=5,
).map("".join)
# ... and anything at all: empty, NUL, control characters, longer than 63 bytes
any_names = st.lists(
    st.one_of(st.sampled_from(HOSTILE_FRAGMENTS), st.text(max_size=6)), max_size=8
).map("".join)


def _valid_identifier(name: str) -> bool:
    if not name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return False
    try:
        return len(name.encode()) <= 63
    except UnicodeEncodeError:
        return False


def _expect_create(statements: list[str], user: str, role: str) -> None:
    """One query (one round trip, one implicit transaction): create, mark, grant."""
    assert len(statements) == 1, statements
    assert re.fullmatch(
        f"CREATE ROLE {re.escape(qi(user))} LOGIN PASSWORD {VERIFIER}"
        r" VALID UNTIL '\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00'"
        + re.escape(
            f"; COMMENT ON ROLE {qi(user)} IS {ql(EPHEMERAL_MARK)}; GRANT {qi(role)} TO {qi(user)}"
        ),
        statements[0],
    ), statements[0]


def _expect_drop(statements: list[str], user: str) -> None:
    """The check, NOLOGIN (committed), then one query: terminate, DROP OWNED, DROP ROLE."""
    assert len(statements) == 3, statements
    check, nologin, drop = statements
    assert check.startswith("SELECT pg_catalog.shobj_description(r.oid, 'pg_authid')")
    assert check.endswith("WHERE r.rolname = $1")
    assert nologin == f"ALTER ROLE {qi(user)} NOLOGIN"
    assert drop == (
        "SELECT pg_catalog.pg_terminate_backend(pid, 5000) FROM pg_catalog.pg_stat_activity"
        f" WHERE usename = {ql_any(user)} AND pid <> pg_catalog.pg_backend_pid()"
        f"; DROP OWNED BY {qi(user)}; DROP ROLE IF EXISTS {qi(user)}"
    )


def _parameters_logged(cluster: PgCluster, mark: int) -> list[str]:
    return [
        e.message
        for e in cluster.entries_since(mark, APPLICATION_NAME)
        if e.level == "DETAIL" and e.message.startswith("parameters: ")
    ]


def _user_ok(name: str) -> bool:
    return _valid_identifier(name) and name not in ("public", "none") and not name.startswith("pg_")


def _role_ok(name: str) -> bool:
    return _valid_identifier(name) and name not in ("public", "none")


def _assert_rejected_before_any_statement(cluster: PgCluster, user: str, role: str) -> None:
    target = cluster.target()
    template = AccountTemplate(name="hostile", grant_roles=(role,))
    baseline = cluster.roles()
    mark = cluster.log_mark()
    with pytest.raises(ValidationError):
        run(PLUGIN.create_account(target, template, user, secret(), later()))
    if not _user_ok(user):
        with pytest.raises(ValidationError):
            run(PLUGIN.drop_account(target, template, user))
    if not _valid_identifier(user):
        for call in (
            PLUGIN.verify(target, user, secret()),
            PLUGIN.rotate(target, user, secret()),
            PLUGIN.elevate(target, user, "pg_monitor", later()),
            PLUGIN.revoke(target, user, "pg_monitor"),
        ):
            with pytest.raises(ValidationError):
                run(call)
    if not _role_ok(role):
        for call in (
            PLUGIN.elevate(target, "someone", role, later()),
            PLUGIN.revoke(target, "someone", role),
        ):
            with pytest.raises(ValidationError):
                run(call)
    assert cluster.entries_since(mark, APPLICATION_NAME) == []
    assert cluster.roles() == baseline


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(user=any_names, role=any_names)
def test_hostile_names_that_are_not_identifiers_are_rejected_before_any_statement(
    pg_cluster: PgCluster, user: str, role: str
) -> None:
    assume(not (_user_ok(user) and _role_ok(role)))
    _assert_rejected_before_any_statement(pg_cluster, user, role)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(user=printable_hostile_names, role=printable_hostile_names)
def test_hostile_names_reach_the_server_only_quoted_in_the_intended_statements(
    pg_cluster: PgCluster, user: str, role: str
) -> None:
    baseline = pg_cluster.roles()
    assume(user != role and user not in baseline and role not in baseline)
    assume(not role.startswith("pg_"))  # a role to grant is made here; pg_* cannot be
    if not (_user_ok(user) and _role_ok(role)):  # e.g. longer than 63 bytes, or "public"
        event("rejected before any statement")
        _assert_rejected_before_any_statement(pg_cluster, user, role)
        return
    target = pg_cluster.target()
    template = AccountTemplate(name="hostile", grant_roles=(role,))
    password = secret()

    event("applied on the server")
    pg_cluster.create_role(role, "NOLOGIN")
    try:
        before = pg_cluster.roles()
        mark = pg_cluster.log_mark()
        run(PLUGIN.create_account(target, template, user, password, later()))
        _expect_create(plugin_statements(pg_cluster, mark), user, role)
        assert _parameters_logged(pg_cluster, mark) == []
        assert [
            e for e in pg_cluster.entries_since(mark, APPLICATION_NAME) if e.level == "ERROR"
        ] == []
        assert pg_cluster.roles() == before | {user}
        assert is_member(pg_cluster, user, role)
        assert pg_cluster.can_login(user, password)

        mark = pg_cluster.log_mark()
        run(PLUGIN.revoke(target, user, role))
        run(PLUGIN.elevate(target, user, role, later()))
        assert plugin_statements(pg_cluster, mark) == [
            f"REVOKE {qi(role)} FROM {qi(user)}",
            f"GRANT {qi(role)} TO {qi(user)}",
        ]
        assert is_member(pg_cluster, user, role)

        mark = pg_cluster.log_mark()
        run(PLUGIN.drop_account(target, template, user))
        _expect_drop(plugin_statements(pg_cluster, mark), user)
        assert _parameters_logged(pg_cluster, mark) == [f"parameters: $1 = {ql(user)}"]
        assert pg_cluster.roles() == before
        assert password.reveal() not in pg_cluster.log_text()
    finally:
        pg_cluster.drop_role(user)
        pg_cluster.drop_role(role)


# -- the admin connection pool ----------------------------------------------------------------


def _admin_backends(cluster: PgCluster) -> set[int]:
    rows = cluster.sql(
        "SELECT pid FROM pg_catalog.pg_stat_activity WHERE application_name = %s AND usename = %s",
        [APPLICATION_NAME, cluster.admin_user],
    )
    return {int(r[0]) for r in rows}


def test_create_and_drop_reuse_one_admin_connection_across_calls(pg_cluster: PgCluster) -> None:
    target = pg_cluster.target(name=unique("pool"))
    template = AccountTemplate(name="pooled", grant_roles=())
    user = unique("jv_pool")
    before = _admin_backends(pg_cluster)  # other tests' targets' pooled connections
    run(PLUGIN.create_account(target, template, user, secret(), later()))
    kept = _admin_backends(pg_cluster) - before
    assert kept, "no admin connection was kept for the next call"
    run(PLUGIN.drop_account(target, template, user))  # another event loop, same connection
    assert kept <= _admin_backends(pg_cluster)
    assert not pg_cluster.role_exists(user)


def test_a_pooled_connection_is_never_used_with_another_admin_secret(
    pg_cluster: PgCluster,
) -> None:
    target = pg_cluster.target(name=unique("pool"))
    template = AccountTemplate(name="pooled", grant_roles=())
    user = unique("jv_pool")
    before = _admin_backends(pg_cluster)
    run(PLUGIN.create_account(target, template, user, secret(), later()))
    assert _admin_backends(pg_cluster) - before
    wrong = type(target)(target.name, target.options, target.admin_user, secret())
    with pytest.raises(TargetRejected) as info:  # a new login, refused: not the pooled one
        run(PLUGIN.drop_account(wrong, template, user))
    assert info.value.retryable is False
    assert pg_cluster.role_exists(user)
    run(PLUGIN.drop_account(target, template, user))
    assert not pg_cluster.role_exists(user)


def test_a_pooled_connection_the_server_closed_is_replaced_and_the_call_succeeds(
    pg_cluster: PgCluster,
) -> None:
    target = pg_cluster.target(name=unique("pool"))
    template = AccountTemplate(name="pooled", grant_roles=())
    user = unique("jv_pool")
    run(PLUGIN.create_account(target, template, user, secret(), later()))
    for pid in _admin_backends(pg_cluster):
        pg_cluster.sql("SELECT pg_catalog.pg_terminate_backend(%s, 5000)", [pid])
    assert _admin_backends(pg_cluster) == set()
    run(PLUGIN.drop_account(target, template, user))
    assert not pg_cluster.role_exists(user)

"""A target whose server speaks German (``lc_messages = de_DE.UTF-8``): ``verify`` still tells a
refused password (False) from a working one (True), and rotation still verifies, because the
refusal is read from its SQLSTATE, not from the message text.

The locale is compiled by ``localedef`` into a directory of the test's own (``LOCPATH`` of the
server), so nothing is installed on the machine.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from jitvault.domain import Sensitive
from jitvault.plugin_api.scram import scram_verifier
from jitvault_postgres import PostgresTarget
from tests.pgcluster import PgCluster, _stop, find_pg_bin, start_cluster

PLUGIN = PostgresTarget()
LOCALE = "de_DE.UTF-8"


@pytest.fixture(scope="module")
def german_cluster() -> Iterator[PgCluster]:
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin)")
    locales = Path(tempfile.mkdtemp(prefix="jitvault-locale-"))
    try:
        locales.chmod(0o755)  # the server runs as postgres
        made = subprocess.run(
            ["localedef", "-i", "de_DE", "-f", "UTF-8", str(locales / LOCALE)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if not (locales / LOCALE).is_dir():
            pytest.skip(f"localedef could not compile {LOCALE}: {made.stderr[-300:]}")
        env = {**os.environ, "LOCPATH": str(locales)}
        cluster = start_cluster(bin_dir, {"lc_messages": f"'{LOCALE}'"}, env)
        try:
            yield cluster
        finally:
            _stop(cluster)
            shutil.rmtree(cluster.workdir, ignore_errors=True)
    finally:
        shutil.rmtree(locales, ignore_errors=True)


def _role(cluster: PgCluster) -> tuple[str, Sensitive[str]]:
    user, password = f"de_{secrets.token_hex(4)}", Sensitive(secrets.token_urlsafe(18))
    cluster.create_role(user, "LOGIN")
    cluster.sql(
        sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(user), sql.Literal(scram_verifier(password).reveal())
        )
    )
    return user, password


def test_the_servers_refusals_are_really_german(german_cluster: PgCluster) -> None:
    """The premise: without this, the tests below would pass for the wrong reason."""
    user, _ = _role(german_cluster)
    with pytest.raises(psycopg.OperationalError) as caught:
        german_cluster.connect_as(user, Sensitive("wrong-password")).close()
    text = str(caught.value)
    assert "Passwort-Authentifizierung" in text, text
    assert "password authentication failed" not in text


def test_verify_tells_a_refused_password_from_a_working_one_on_a_german_server(
    german_cluster: PgCluster,
) -> None:
    target = german_cluster.target()
    user, password = _role(german_cluster)
    assert asyncio.run(PLUGIN.verify(target, user, password)) is True
    assert asyncio.run(PLUGIN.verify(target, user, Sensitive("wrong-password"))) is False
    assert asyncio.run(PLUGIN.verify(target, f"nobody_{secrets.token_hex(3)}", password)) is False
    # refused after the password proof (28000, "darf sich nicht anmelden")
    german_cluster.sql(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(user)))
    assert asyncio.run(PLUGIN.verify(target, user, password)) is False


def test_rotation_on_a_german_server_sets_and_verifies_the_new_password(
    german_cluster: PgCluster,
) -> None:
    target = german_cluster.target()
    user, old = _role(german_cluster)
    new = Sensitive(secrets.token_urlsafe(18))
    asyncio.run(PLUGIN.rotate(target, user, new))
    assert asyncio.run(PLUGIN.verify(target, user, new)) is True
    assert asyncio.run(PLUGIN.verify(target, user, old)) is False

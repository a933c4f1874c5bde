"""Key rotation survives ``kill -9`` at random points of the background re-encryption.

A data directory holds 10,000 account secrets with known, distinct values. Twenty times a real
``jitvault server`` is started, asked to rotate the key, and killed with SIGKILL after a random
delay while its worker re-encrypts. After every kill the database is opened in process and every
secret must still decrypt to its value, with its ``*_term`` column naming the term its envelope
was sealed under and that term's key still present. A last run finishes the rotation: then every
value is under the one remaining data term and every older term's key material is destroyed.
"""

from __future__ import annotations

import random
import secrets
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import tomli_w
from sqlalchemy import bindparam, insert, select, update

from jitvault import audit
from jitvault.config import Settings, load_settings
from jitvault.crypto import PURPOSE_DATA, parse_term
from jitvault.domain import AccountMode, Principal, Role, Sensitive
from jitvault.services import Node, targets
from jitvault.storage import repositories as repo
from jitvault.storage import sealed
from jitvault.storage import tables as t
from tests.support import ServerProcess, free_port, init_data_dir, start_server

N_SECRETS = 10_000
N_KILLS = 20
CHUNK = 2_500
TARGET_SECRET = "target-admin-secret-value"
#: the longest random delay between the rotation request and the kill, in seconds
MAX_DELAY = 1.5


@dataclass
class DataDir:
    config: Path
    port: int
    settings: Settings
    admin_token: str
    target_id: int
    expected: dict[int, str] = field(default_factory=dict)


def _init_data_dir(tmp_path: Path, database_url: str) -> DataDir:
    data_dir = tmp_path / "data"
    port = free_port()
    token = init_data_dir(data_dir, port, database_url)
    config = data_dir / "config.toml"
    doc = tomllib.loads(config.read_text())
    doc.setdefault("server", {})["worker_interval"] = 0.05  # start re-encrypting promptly
    config.write_text(tomli_w.dumps(doc))
    settings = load_settings(config)
    assert settings.server.worker_interval == 0.05
    return DataDir(config, port, settings, token, target_id=0)


def _fill(dd: DataDir) -> None:
    """10,000 account secrets, sealed under the active term in a few big transactions."""
    node = Node.open(dd.settings)
    try:
        assert node.vault.auto_unseal()
        with node.read() as conn:
            user = repo.user_get(conn, "admin")
        admin = Principal(user.id, user.name, Role.ADMIN, ())
        targets.add_target(
            node,
            admin,
            "db1",
            "postgres",
            {"host": "127.0.0.1"},
            admin_user="postgres",
            admin_secret=Sensitive(TARGET_SECRET),
        )
        dd.target_id = targets.get_target(node, admin, "db1").id
        for start in range(0, N_SECRETS, CHUNK):
            names = [f"acct{i:05d}" for i in range(start, start + CHUNK)]
            with node.write() as tx:
                tx.conn.execute(
                    insert(t.accounts),
                    [
                        {
                            "target_id": dd.target_id,
                            "username": name,
                            "mode": AccountMode.INJECTED.value,
                            "status": "ok",
                            "created_at": repo.now(),
                        }
                        for name in names
                    ],
                )
                rows = tx.conn.execute(
                    select(t.accounts.c.id, t.accounts.c.username).where(
                        t.accounts.c.username.in_(names)
                    )
                ).all()
                # one executemany per chunk: seal_column's per-row term lock costs ~1 ms a row
                term = tx.keyring.active_term
                sealed_rows = []
                for row_id, name in rows:
                    value = f"{name}:{secrets.token_urlsafe(12)}"
                    ctx = sealed.context_for(t.ACCOUNT_SECRET, row_id)
                    envelope = tx.keyring.encrypt(Sensitive(value.encode()), ctx)
                    sealed_rows.append({"b_id": row_id, "b_secret": envelope, "b_term": term})
                    dd.expected[row_id] = value
                tx.conn.execute(
                    update(t.accounts)
                    .where(t.accounts.c.id == bindparam("b_id"))
                    .values(secret=bindparam("b_secret"), secret_term=bindparam("b_term")),
                    sealed_rows,
                )
        assert len(set(dd.expected.values())) == N_SECRETS
    finally:
        node.close()


@dataclass
class Check:
    active_term: int
    remaining: int
    terms_in_use: set[int]


def _check_every_secret(dd: DataDir) -> Check:
    """Open the database in process; every stored value must decrypt to what was stored."""
    node = Node.open(dd.settings)
    try:
        assert node.vault.auto_unseal()
        keyring = node.vault.keyring
        with node.read() as conn:
            keyrows = {
                r.term: r
                for r in conn.execute(
                    select(t.keyring).where(t.keyring.c.purpose == PURPOSE_DATA)
                ).all()
            }
            rows = conn.execute(
                select(t.accounts.c.id, t.accounts.c.secret, t.accounts.c.secret_term)
            ).all()
            target = conn.execute(
                select(t.targets.c.admin_secret, t.targets.c.admin_secret_term).where(
                    t.targets.c.id == dd.target_id
                )
            ).one()
            active = keyring.active_term
            remaining = sealed.count_below(conn, active)
            chain = audit.verify(conn, keyring)
        assert chain.ok, chain.reason
        assert len(rows) == N_SECRETS
        terms_in_use: set[int] = set()
        wrong: list[int] = []
        for row_id, envelope, term in rows:
            # the companion column must name the envelope's real term, or re-encryption would
            # skip the row and the term's key could be destroyed under it
            assert parse_term(envelope) == term, row_id
            terms_in_use.add(term)
            ctx = sealed.context_for(t.ACCOUNT_SECRET, row_id)
            if keyring.decrypt(envelope, ctx).reveal().decode() != dd.expected[row_id]:
                wrong.append(row_id)
        assert wrong == [], f"{len(wrong)} secrets decrypt to the wrong value"
        assert parse_term(target.admin_secret) == target.admin_secret_term
        terms_in_use.add(target.admin_secret_term)
        ctx = sealed.context_for(t.TARGET_ADMIN_SECRET, dd.target_id)
        assert keyring.decrypt(target.admin_secret, ctx).reveal().decode() == TARGET_SECRET
        for term in terms_in_use:
            assert keyrows[term].state != "retired", term
            assert keyrows[term].wrapped is not None, term
        assert keyrows[active].state == "active"
        assert [r.term for r in keyrows.values() if r.state == "active"] == [active]
        return Check(active, remaining, terms_in_use)
    finally:
        node.close()


def _rotate(server: ServerProcess, token: str) -> dict[str, object]:
    resp = httpx.post(
        f"{server.addr}/v1/sys/rotate-key",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, object] = resp.json()
    return body


def _wait_done(server: ServerProcess, token: str, timeout: float = 90.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    status: dict[str, object] = {}
    while time.monotonic() < deadline:
        resp = httpx.get(
            f"{server.addr}/v1/sys/rekey-status",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        status = resp.json()
        if status["done"]:
            return status
        time.sleep(0.2)
    raise AssertionError(f"re-encryption did not finish within {timeout}s: {status}")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_kill_9_during_reencryption_never_loses_a_secret_and_rotation_completes(
    tmp_path: Path, database_url: str
) -> None:
    rng = random.Random()
    dd = _init_data_dir(tmp_path, database_url)
    _fill(dd)
    first = _check_every_secret(dd)
    assert first.active_term == 1
    assert first.terms_in_use == {1}

    total = N_SECRETS + 1
    landed_mid_way = 0
    active = first.active_term
    for run in range(N_KILLS):
        server = start_server(dd.config, dd.port)
        try:
            status = _rotate(server, dd.admin_token)
            assert status["active_term"] == active + 1
            # every value is behind the new term (the worker may have moved a first batch)
            assert 0 <= int(str(status["remaining"])) <= total
            time.sleep(rng.uniform(0.0, MAX_DELAY))
        finally:
            server.kill9()
        assert server.proc.returncode == -9, f"run {run}: the server was not killed by SIGKILL"
        check = _check_every_secret(dd)
        assert check.active_term == active + 1, f"run {run}: the rotation did not persist"
        active = check.active_term
        if 0 < check.remaining < total:
            landed_mid_way += 1
    # the kills must have hit the re-encryption itself, or this test proved nothing
    assert landed_mid_way >= 1, "no kill landed during re-encryption: raise MAX_DELAY"

    server = start_server(dd.config, dd.port)
    try:
        final = _wait_done(server, dd.admin_token)
    finally:
        server.stop()
    assert final["active_term"] == active
    assert final["terms"] == [active]
    assert final["remaining"] == 0

    check = _check_every_secret(dd)
    assert check.remaining == 0
    assert check.terms_in_use == {active}
    node = Node.open(dd.settings)
    try:
        with node.read() as conn:
            data_rows = conn.execute(
                select(t.keyring).where(t.keyring.c.purpose == PURPOSE_DATA)
            ).all()
            for col in t.ENCRYPTED_COLUMNS:
                tc = col.table.c[col.term_column]
                left = conn.execute(
                    select(tc).where(tc.is_not(None), tc != active).limit(1)
                ).first()
                assert left is None, f"{col.table.name}.{col.column} has a row under {left}"
    finally:
        node.close()
    assert len(data_rows) == N_KILLS + 1
    live = [r for r in data_rows if r.state != "retired"]
    assert [(r.term, r.state) for r in live] == [(active, "active")]
    assert live[0].wrapped is not None
    for row in data_rows:
        if row.term != active:
            assert row.state == "retired", row.term
            assert row.wrapped is None, f"term {row.term} kept its key material"
            assert row.retired_at is not None

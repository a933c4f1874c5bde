"""Shamir unseal of a real node: in process (every combination) and through the HTTP API + CLI."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from jitvault.config import Settings
from jitvault.domain import AccountMode, Principal, Role, Sensitive
from jitvault.errors import KeyProviderError, Sealed, ValidationError
from jitvault.services import Node, system, targets
from jitvault.storage import repositories as repo
from tests.conftest import make_settings, scratch_database
from tests.support import cli_env, free_port, run_cli, running_server

VAULTED = "vaulted-credential-Ϟ-42"


def shamir_settings(data_dir: Path, database_url: str) -> Settings:
    return make_settings(data_dir, database_url, keys={"provider": "shamir"})


@dataclass
class ShamirVault:
    node: Node
    shares: list[Sensitive[str]]
    admin: Principal


def _open_shamir(data_dir: Path, database_url: str) -> tuple[Node, list[Sensitive[str]]]:
    node = Node.open(shamir_settings(data_dir, database_url))
    result = system.initialize(node, shares=5, threshold=3)
    return node, result.shares


@pytest.fixture
def v(tmp_path: Path, database_url: str) -> Iterator[ShamirVault]:
    node, shares = _open_shamir(tmp_path / "data", database_url)
    try:
        with node.read() as conn:
            user = repo.user_get(conn, "admin")
        admin = Principal(user.id, user.name, Role.ADMIN, ())
        targets.add_target(node, admin, "db1", "postgres", {"host": "127.0.0.1"})
        targets.add_account(node, admin, "db1", "app", AccountMode.INJECTED, Sensitive(VAULTED))
        yield ShamirVault(node, shares, admin)
    finally:
        node.close()


def _vaulted(v: ShamirVault) -> Sensitive[str] | None:
    account = targets.get_account(v.node, v.admin, "db1", "app")
    return targets.account_secret(v.node, account)


def test_initialize_returns_five_shares_and_leaves_the_vault_unsealed(v: ShamirVault) -> None:
    status = v.node.vault.status()
    assert len(v.shares) == 5
    assert not v.node.vault.sealed
    assert (status.shares, status.threshold, status.provider) == (5, 3, "shamir")
    assert _vaulted(v) == Sensitive(VAULTED)


def test_a_sealed_shamir_vault_refuses_credential_use_and_does_not_auto_unseal(
    v: ShamirVault,
) -> None:
    v.node.vault.seal()
    assert v.node.vault.sealed
    assert v.node.vault.auto_unseal() is False
    assert v.node.vault.sealed
    with pytest.raises(Sealed):
        _vaulted(v)


@pytest.mark.parametrize("combo", list(itertools.combinations(range(5), 3)))
def test_any_three_of_five_shares_unseal_and_open_the_vaulted_secret(
    v: ShamirVault, combo: tuple[int, ...]
) -> None:
    vault = v.node.vault
    for round_ in range(2):  # sealing again between rounds: the same shares open it again
        vault.seal()
        assert vault.sealed
        for given, i in enumerate(combo, 1):
            status = vault.submit_share(v.shares[i])
            if given < 3:
                assert status.progress == given
                assert vault.sealed, (combo, given, round_)
                with pytest.raises(Sealed):
                    _vaulted(v)
        assert not vault.sealed
        assert vault.status().progress == 0
        assert _vaulted(v) == Sensitive(VAULTED)


def test_all_ten_combinations_in_a_row_on_one_node(v: ShamirVault) -> None:
    vault = v.node.vault
    for combo in itertools.combinations(range(5), 3):
        vault.seal()
        for i in combo:
            vault.submit_share(v.shares[i])
        assert not vault.sealed, combo
        assert _vaulted(v) == Sensitive(VAULTED)


@pytest.mark.parametrize("combo", list(itertools.combinations(range(5), 2)))
def test_two_of_five_shares_leave_the_vault_sealed(v: ShamirVault, combo: tuple[int, ...]) -> None:
    vault = v.node.vault
    vault.seal()
    for i in combo:
        vault.submit_share(v.shares[i])
    assert vault.sealed
    assert vault.status().progress == 2
    with pytest.raises(Sealed):
        _vaulted(v)


def test_a_share_given_twice_is_refused_and_does_not_count(v: ShamirVault) -> None:
    vault = v.node.vault
    vault.seal()
    vault.submit_share(v.shares[0])
    with pytest.raises(ValidationError, match="already given"):
        vault.submit_share(v.shares[0])
    with pytest.raises(ValidationError, match="already given"):
        vault.submit_share(Sensitive(v.shares[0].reveal() + "\n"))
    assert vault.status().progress == 1
    vault.submit_share(v.shares[3])
    assert vault.sealed
    vault.submit_share(v.shares[4])
    assert not vault.sealed


def test_a_mistyped_share_is_refused_before_it_counts(v: ShamirVault) -> None:
    vault = v.node.vault
    vault.seal()
    text = v.shares[1].reveal()
    typo = text[:10] + ("B" if text[10] != "B" else "C") + text[11:]
    with pytest.raises(ValidationError, match="checksum"):
        vault.submit_share(Sensitive(typo))
    assert vault.status().progress == 0
    for i in (1, 2, 3):
        vault.submit_share(v.shares[i])
    assert not vault.sealed


def test_shares_of_another_vault_are_refused_and_progress_resets(
    v: ShamirVault, tmp_path: Path, db_kind: str
) -> None:
    with scratch_database(db_kind, tmp_path / "other") as other_url:
        other_node, other_shares = _open_shamir(tmp_path / "other" / "data", other_url)
        other_node.close()
    vault = v.node.vault
    vault.seal()
    vault.submit_share(other_shares[0])
    vault.submit_share(other_shares[1])
    with pytest.raises(KeyProviderError, match="do not open the vault"):
        vault.submit_share(other_shares[2])
    status = vault.status()
    assert vault.sealed
    assert status.progress == 0
    assert status.error is not None
    with pytest.raises(Sealed):
        _vaulted(v)
    # progress really restarted: this vault's own threshold opens it from scratch
    for i in (2, 3):
        vault.submit_share(v.shares[i])
        assert vault.sealed
    vault.submit_share(v.shares[4])
    assert not vault.sealed
    assert vault.status().error is None
    assert _vaulted(v) == Sensitive(VAULTED)


def test_two_own_shares_and_one_foreign_share_are_refused(
    v: ShamirVault, tmp_path: Path, db_kind: str
) -> None:
    with scratch_database(db_kind, tmp_path / "other") as other_url:
        other_node, other_shares = _open_shamir(tmp_path / "other" / "data", other_url)
        other_node.close()
    vault = v.node.vault
    vault.seal()
    vault.submit_share(v.shares[0])
    vault.submit_share(v.shares[1])
    # x = 3 is not among the shares given, so only the key check can refuse it
    with pytest.raises(KeyProviderError):
        vault.submit_share(other_shares[2])
    assert vault.sealed
    assert vault.status().progress == 0


def test_a_new_node_on_the_same_database_starts_sealed_and_takes_shares(
    v: ShamirVault, tmp_path: Path, database_url: str
) -> None:
    other = Node.open(shamir_settings(tmp_path / "data", database_url))
    try:
        assert other.vault.auto_unseal() is False
        assert other.vault.sealed
        for i in (4, 0, 2):
            other.vault.submit_share(v.shares[i])
        assert not other.vault.sealed
        account = targets.get_account(other, v.admin, "db1", "app")
        assert targets.account_secret(other, account) == Sensitive(VAULTED)
    finally:
        other.close()


# --- through the HTTP API and the CLI ------------------------------------------------------------


def test_server_unseals_with_three_cli_shares_and_health_turns_200(
    tmp_path: Path, database_url: str
) -> None:
    data_dir = tmp_path / "srv"
    env = cli_env()
    init = run_cli(
        "init",
        "--data-dir",
        str(data_dir),
        "--key-provider",
        "shamir",
        "--database-url",
        database_url,
        "--port",
        str(free_port()),
        env=env,
    )
    assert init.returncode == 0, init.stderr
    config = data_dir / "config.toml"
    assert 'provider = "shamir"' in config.read_text()
    assert not (data_dir / "root.key").exists()

    with running_server(config) as server:
        health = httpx.get(f"{server.addr}/v1/sys/health", timeout=10)
        assert health.status_code == 503
        assert health.json()["state"] == "uninitialized"
        out = run_cli(
            "operator",
            "init",
            "--shares",
            "5",
            "--threshold",
            "3",
            "--json",
            env=cli_env(server.addr),
        )
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        shares, token = data["shares"], data["admin_token"]
        assert len(shares) == 5
        assert len(set(shares)) == 5
        # initialized means unsealed until the process stops
        assert httpx.get(f"{server.addr}/v1/sys/health", timeout=10).status_code == 200
        again = run_cli("operator", "init", "--json", env=cli_env(server.addr))
        assert again.returncode != 0

    # a restarted server has the keyring only in memory: it comes back sealed
    with running_server(config) as server:
        env = cli_env(server.addr, token)
        health = httpx.get(f"{server.addr}/v1/sys/health", timeout=10)
        assert health.status_code == 503
        assert health.json()["state"] == "sealed"
        rekey = httpx.get(
            f"{server.addr}/v1/sys/rekey-status",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert rekey.status_code == 503

        for given, share in enumerate([shares[4], shares[1], shares[2]], 1):
            # the share travels on standard input, never on the command line
            out = run_cli("operator", "unseal", env=env, stdin=share + "\n")
            assert out.returncode == 0, out.stderr
            assert share not in out.stdout + out.stderr
            health = httpx.get(f"{server.addr}/v1/sys/health", timeout=10)
            if given < 3:
                assert out.stdout.strip() == f"sealed: {given}/3 shares given"
                assert health.status_code == 503
            else:
                assert out.stdout.strip() == "unsealed"
                assert health.status_code == 200
                assert health.json()["status"] == "ok"
        rekey = httpx.get(
            f"{server.addr}/v1/sys/rekey-status",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert rekey.status_code == 200
        assert rekey.json()["active_term"] == 1
        status = run_cli("operator", "seal-status", "--json", env=env)
        assert json.loads(status.stdout)["sealed"] is False
        log = server.log.read_text()
        for share in shares:
            assert share not in log


def test_server_refuses_foreign_shares_through_the_cli(
    tmp_path: Path, database_url: str, db_kind: str
) -> None:
    # a second vault's shares, made in process
    with scratch_database(db_kind, tmp_path / "other") as other_url:
        other_node, foreign = _open_shamir(tmp_path / "other" / "data", other_url)
        other_node.close()
    data_dir = tmp_path / "srv"
    node, _ = _open_shamir(data_dir, database_url)
    node.close()
    config = data_dir / "config.toml"
    system.write_config(shamir_settings(data_dir, database_url))

    with running_server(config) as server:
        env = cli_env(server.addr)
        for share in foreign[:2]:
            assert run_cli("operator", "unseal", env=env, stdin=share.reveal()).returncode == 0
        out = run_cli("operator", "unseal", env=env, stdin=foreign[2].reveal())
        assert out.returncode != 0
        assert "do not open the vault" in out.stderr
        status = httpx.get(f"{server.addr}/v1/sys/seal-status", timeout=10).json()
        assert status["sealed"] is True
        assert status["progress"] == 0
        assert httpx.get(f"{server.addr}/v1/sys/health", timeout=10).status_code == 503

"""SSH targets through the real CLI and server, as an operator runs them, against a real sshd.

``jitvault target add ssh`` pins the host key, accounts go in with a password or a key file,
``account verify`` logs in, ``jitvault rotate`` changes the password or the authorized key, and
no secret shows in any output, the server's log or the audit rows. Both state stores (``--db``).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from jitvault.config import load_settings
from jitvault.crypto import generate_password, generate_ssh_private_key
from jitvault.domain import Sensitive
from jitvault.services import Node
from jitvault.storage import journal
from jitvault.storage import repositories as repo
from jitvault.storage import tables as t
from jitvault_ssh.connect import public_key_line
from tests.ssh_accounts import authorized_keys, can_login, install_key
from tests.sshd import SshdServer, start_sshd
from tests.support import ServerProcess, cli_env, free_port, init_data_dir, run_cli, start_server


@dataclass
class Jitvault:
    server: ServerProcess
    config: Path
    env: dict[str, str]
    outputs: list[str]

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        done = run_cli(*args, env=self.env, stdin=stdin)
        self.outputs.extend((done.stdout, done.stderr))
        return done

    def ok(self, *args: str, stdin: str | None = None) -> str:
        done = self.cli(*args, stdin=stdin)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def json(self, *args: str) -> object:
        return json.loads(self.ok(*args, "--json"))

    def events(self, action: str) -> list[dict[str, Any]]:
        listed = self.json("audit", "list", "--since", "1h")
        assert isinstance(listed, list)
        return [e for e in listed if e["action"] == action]

    def vaulted(self, target: str, user: str) -> Sensitive[str]:
        """The account's current vaulted secret (read in process, for the test's own checks)."""
        node = Node.open(load_settings(self.config))
        try:
            node.vault.auto_unseal()
            with node.read() as conn:
                account = repo.account_get(conn, target, user)
                current, _ = journal.account_secrets(conn, node.vault.keyring, account.id)
            assert current is not None
            return current.map(bytes.decode)
        finally:
            node.close()

    def audit_text(self) -> str:
        node = Node.open(load_settings(self.config))
        try:
            with node.read() as conn:
                rows = conn.execute(select(t.audit_events)).all()
            return "\n".join(repr(tuple(r)) for r in rows)
        finally:
            node.close()


@pytest.fixture
def jitvault(tmp_path: Path, database_url: str) -> Iterator[Jitvault]:
    port = free_port()
    data = tmp_path / "data"
    token = init_data_dir(data, port, database_url)
    config = data / "config.toml"
    server = start_server(config, port, env=cli_env())
    try:
        yield Jitvault(server, config, cli_env(server.addr, token), [])
    finally:
        server.stop()


def key_file(tmp_path: Path, secret: Sensitive[str], name: str) -> Path:
    path = tmp_path / name
    path.write_text(secret.reveal())
    path.chmod(0o600)
    return path


def add_target(jv: Jitvault, server: SshdServer, name: str = "web-1") -> dict[str, object]:
    jv.ok("target", "add", "ssh", name, "--host", server.host, "--port", str(server.port),
          "--admin-user", "root", "--admin-key-file", str(server.admin_key))  # fmt: skip
    shown = jv.json("target", "show", name)
    assert isinstance(shown, dict)
    return shown


def test_ssh_target_accounts_verify_and_rotate_through_the_cli_never_show_a_secret(
    jitvault: Jitvault, sshd_server: SshdServer, tmp_path: Path
) -> None:
    jv = jitvault
    shown = add_target(jv, sshd_server)
    options = shown["options"]
    assert isinstance(options, dict)
    assert options["host_key"] == sshd_server.host_key_line  # pinned at registration
    assert shown["has_admin_secret"] is True
    assert "host_key" in jv.ok("target", "show", "web-1")
    assert jv.events("target.created")[0]["details"]["enrolled"] == ["host_key"]

    # a password account and a key account, each as the operator knows it today
    old_pw = generate_password()
    pw_user = sshd_server.add_user(password=old_pw.reveal())
    old_key = generate_ssh_private_key()
    key_user = sshd_server.add_user()
    install_key(key_user, old_key)
    jv.ok("account", "add", "web-1", pw_user, "--password-stdin", stdin=old_pw.reveal() + "\n")
    jv.ok("account", "add", "web-1", key_user, "--key-file", str(key_file(tmp_path, old_key, "k")))
    for user in (pw_user, key_user):
        assert jv.ok("account", "verify", f"web-1/{user}").strip() == f"web-1/{user}: ok"
    # an operator's mistake, and its correction, with set-secret --key-file
    wrong = key_file(tmp_path, generate_ssh_private_key(), "wrong")
    jv.ok("account", "set-secret", f"web-1/{key_user}", "--key-file", str(wrong))
    done = jv.cli("account", "verify", f"web-1/{key_user}")
    assert (done.returncode, done.stdout.strip()) == (
        1,
        f"web-1/{key_user}: FAILED: does not log in",
    )
    right = key_file(tmp_path, old_key, "right")
    jv.ok("account", "set-secret", f"web-1/{key_user}", "--key-file", str(right))
    assert jv.ok("account", "verify", f"web-1/{key_user}").strip() == f"web-1/{key_user}: ok"

    # rotate both: the old secret stops working, the vaulted one logs in
    secrets_seen = [old_pw, old_key]
    for user, old in ((pw_user, old_pw), (key_user, old_key)):
        assert jv.ok("rotate", f"web-1/{user}").strip() == f"web-1/{user}: rotated"
        new = jv.vaulted("web-1", user)
        secrets_seen.append(new)
        assert new != old
        assert ("PRIVATE KEY" in new.reveal()) == (user == key_user)  # same kind as before
        assert not can_login(sshd_server, user, old)
        assert can_login(sshd_server, user, new)
        assert jv.ok("account", "verify", f"web-1/{user}").strip() == f"web-1/{user}: ok"
    assert authorized_keys(key_user).splitlines() == [
        f"{public_key_line(jv.vaulted('web-1', key_user))} jitvault-managed"
    ]
    assert len(jv.events("rotation.completed")) == 2

    # canary: no output, no server log line, no audit row holds any of the secrets
    secrets_seen.append(Sensitive(sshd_server.admin_key_text()))
    everything = "\n".join(jv.outputs)
    server_log = jv.server.log.read_text()
    audit = jv.audit_text()
    for secret in secrets_seen:
        for line in _forms(secret):
            assert line not in everything
            assert line not in server_log
            assert line not in audit


def _forms(secret: Sensitive[str]) -> list[str]:
    """The secret, and for a key each of its base64 lines (a partial leak is a leak)."""
    value = secret.reveal()
    if "PRIVATE KEY" not in value:
        return [value]
    return [line for line in value.splitlines() if line and "PRIVATE KEY" not in line]


def test_a_re_keyed_host_is_refused_with_a_clear_error(
    jitvault: Jitvault, sshd_server: SshdServer, tmp_path: Path
) -> None:
    jv = jitvault
    with start_sshd() as first:
        pw = generate_password()
        user = first.add_user(password=pw.reveal())
        add_target(jv, first, "web-2")
        jv.ok("account", "add", "web-2", user, "--password-stdin", stdin=pw.reveal() + "\n")
        assert "ok" in jv.ok("account", "verify", f"web-2/{user}")
        port = first.port
        first.stop()
        # another host (another host key) now answers on the pinned address
        with start_sshd(port=port) as impostor:
            assert impostor.host_key_line != first.host_key_line
            done = jv.cli("account", "verify", f"web-2/{user}")
            assert done.returncode != 0
            assert "presented a host key other than the pinned one" in done.stderr
            assert "re-keyed on purpose, register the target again" in done.stderr
            done = jv.cli("rotate", f"web-2/{user}")
            assert done.returncode != 0
            assert "host key other than the pinned one" in done.stderr
            assert "Accepted " not in impostor.log  # nothing logged in to the impostor
        assert jv.vaulted("web-2", user) == pw  # the rotation journaled nothing it lost


def test_an_ssh_target_whose_host_cannot_be_reached_is_not_registered(
    jitvault: Jitvault, sshd_server: SshdServer
) -> None:
    jv = jitvault
    done = jv.cli("target", "add", "ssh", "web-3", "--host", "127.0.0.1", "--port",
                  str(free_port()), "--admin-user", "root", "--admin-key-file",
                  str(sshd_server.admin_key))  # fmt: skip
    assert done.returncode != 0
    assert "could not read the host key" in done.stderr
    assert jv.cli("target", "show", "web-3").returncode != 0


def test_an_explicit_host_key_option_is_pinned_as_given(
    jitvault: Jitvault, sshd_server: SshdServer
) -> None:
    jv = jitvault
    other = public_key_line(generate_ssh_private_key())
    jv.ok("target", "add", "ssh", "web-4", "--host", sshd_server.host, "--port",
          str(sshd_server.port), "--option", f"host_key={other}", "--admin-user", "root",
          "--admin-key-file", str(sshd_server.admin_key))  # fmt: skip
    shown = jv.json("target", "show", "web-4")
    assert isinstance(shown, dict)
    assert shown["options"]["host_key"] == other


def test_a_key_file_with_a_passphrase_or_without_a_key_is_refused(
    jitvault: Jitvault, sshd_server: SshdServer, tmp_path: Path
) -> None:
    jv = jitvault
    add_target(jv, sshd_server, "web-5")
    locked = tmp_path / "locked"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "a passphrase", "-f", str(locked)],
        check=True,
    )
    done = jv.cli("account", "add", "web-5", "deploy", "--key-file", str(locked))
    assert done.returncode != 0
    assert "passphrase" in done.stderr
    not_a_key = tmp_path / "notes.txt"
    not_a_key.write_text("hello\n")
    done = jv.cli("account", "add", "web-5", "deploy", "--key-file", str(not_a_key))
    assert done.returncode != 0
    assert "holds no private key" in done.stderr

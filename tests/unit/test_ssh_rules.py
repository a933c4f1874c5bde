"""Rules of the SSH lifecycle that need no host: names, elevation roles, expiry dates, secret
kinds, and the keys the core generates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import asyncssh
import pytest

from jitvault.crypto import generate_secret, generate_ssh_private_key, is_usable_private_key
from jitvault.domain import SecretKind, Sensitive
from jitvault.errors import ValidationError
from jitvault.plugin_api import TargetPlugin
from jitvault_ssh import SshTarget
from jitvault_ssh.lifecycle import FULL_SUDO_RULE, Elevation, expiry_date, parse_role, validate_name


@pytest.mark.parametrize("name", ["a", "_svc", "deploy", "web-1_x", "a" * 32, "jv0123"])
def test_linux_names_that_follow_the_rules_are_accepted(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "1abc", "-rf", "Deploy", "a" * 33, "a b", "a;b", "a$(id)", "é", "a\x00", "a.b", "a/b"],
)
def test_other_names_are_rejected_not_truncated(name: str) -> None:
    with pytest.raises(ValidationError, match="invalid user name"):
        validate_name(name)


def test_roles_parse_into_groups_and_sudoers_rules() -> None:
    assert parse_role("adm") == Elevation(group="adm")
    assert parse_role("group:docker") == Elevation(group="docker")
    assert parse_role("sudo") == Elevation(sudo_rule=FULL_SUDO_RULE)
    rule = "ALL=(root) NOPASSWD: /usr/bin/systemctl restart nginx"
    assert parse_role(f"sudo:{rule}").sudoers_line("ops") == f"ops {rule}"
    for bad in ("group:", "group:Bad", "sudo:", "sudo:/usr/bin/id", "sudo:ALL=(ALL) ALL #x"):
        with pytest.raises(ValidationError):
            parse_role(bad)


def test_the_linux_expiry_date_is_the_day_after_the_grant_ends_in_utc() -> None:
    assert expiry_date(datetime(2030, 1, 31, 23, 59, tzinfo=UTC)) == "2030-02-01"
    assert expiry_date(datetime(2030, 1, 31, 0, 0, tzinfo=UTC)) == "2030-02-01"
    # 01:00 at UTC+2 is still the previous day in UTC
    plus2 = timezone(timedelta(hours=2))
    assert expiry_date(datetime(2030, 2, 1, 1, 0, tzinfo=plus2)) == "2030-02-01"


def test_an_ssh_account_keeps_its_kind_of_secret_and_a_new_one_gets_a_key() -> None:
    plugin = SshTarget()
    assert plugin.secret_kind(Sensitive("a password")) == SecretKind.PASSWORD
    assert plugin.secret_kind(generate_ssh_private_key()) == SecretKind.SSH_KEY
    assert plugin.secret_kind(None) == SecretKind.SSH_KEY
    assert TargetPlugin().secret_kind(None) == SecretKind.PASSWORD  # the contract's default


def test_generated_keys_are_distinct_unencrypted_openssh_ed25519_keys() -> None:
    first, second = generate_secret(SecretKind.SSH_KEY), generate_ssh_private_key()
    assert first != second
    assert first.reveal().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert is_usable_private_key(first)
    assert asyncssh.import_private_key(first.reveal()).get_algorithm() == "ssh-ed25519"
    assert repr(first) == repr(Sensitive("x"))  # redacted like every secret
    assert "PRIVATE KEY" not in generate_secret(SecretKind.PASSWORD).reveal()


def test_a_key_with_a_passphrase_or_a_mangled_key_is_not_usable() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    locked = key.export_private_key("openssh", passphrase="secret").decode()
    assert not is_usable_private_key(Sensitive(locked))
    text = generate_ssh_private_key().reveal()
    assert not is_usable_private_key(Sensitive(text.replace("b3Bl", "AAAA", 1)))

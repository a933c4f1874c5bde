"""The SSH target plugin's credential lifecycle against a real sshd (Debian's openssh-server).

Every test talks to the ``sshd_server`` fixture as root (its admin key) through the plugin, then
checks the host itself: ``/etc/passwd``, ``authorized_keys``, ``/etc/sudoers.d``, and logins
with paramiko (an SSH client independent of the plugin's asyncssh).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import secrets
import stat
import subprocess
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitvault.crypto import generate_password, generate_ssh_private_key
from jitvault.domain import SecretKind, Sensitive
from jitvault.errors import ValidationError
from jitvault.plugin_api import AccountTemplate, TargetAccess, TargetRejected
from jitvault_ssh import SshTarget
from jitvault_ssh.connect import public_key_line
from jitvault_ssh.lifecycle import EPHEMERAL_MARK, KEY_MARK
from tests.ssh_accounts import (
    accepted_logins,
    authorized_keys,
    can_login,
    groups_of,
    requires_sudo,
    sudoers_file,
    sudoers_lines,
    user_exists,
)
from tests.sshd import SshdServer
from tests.support import free_port

T = TypeVar("T")
PLUGIN = SshTarget()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def later(hours: int = 1) -> datetime:
    return datetime.now(UTC) + timedelta(hours=hours)


def access(server: SshdServer, **options: object) -> TargetAccess:
    opts: dict[str, object] = {
        "host": server.host,
        "port": server.port,
        "host_key": server.host_key_line,
    }
    opts.update(options)
    return TargetAccess("web-1", opts, "root", Sensitive(server.admin_key_text()))


@pytest.fixture
def target(sshd_server: SshdServer) -> TargetAccess:
    return access(sshd_server)


@pytest.fixture
def ephemeral(sshd_server: SshdServer) -> Iterator[str]:
    """A fresh name for an ephemeral user (removed at the end if a test left it)."""
    name = f"jve{secrets.token_hex(4)}"
    yield name
    if user_exists(name):
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True, check=False)
        subprocess.run(["userdel", "--remove", "--force", name], capture_output=True, check=False)
    if os.path.exists(sudoers_file(name)):
        os.remove(sudoers_file(name))


def password() -> Sensitive[str]:
    return generate_password()


def key_user(server: SshdServer) -> str:
    """A user who logs in with keys only (a locked password would refuse keys as well)."""
    user = server.add_user()
    subprocess.run(["usermod", "--password", "*", user], check=True)
    return user


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- enroll and host keys -----------------------------------------------------------------------


def test_enroll_pins_the_host_key_the_server_presents_and_keeps_a_given_one(
    sshd_server: SshdServer,
) -> None:
    unpinned = access(sshd_server, host_key=None)
    assert run(PLUGIN.enroll(unpinned)) == {"host_key": sshd_server.host_key_line}
    assert run(PLUGIN.enroll(access(sshd_server))) == {}


def test_enroll_refuses_a_host_key_option_that_is_not_a_public_key(
    sshd_server: SshdServer,
) -> None:
    with pytest.raises(ValidationError, match="not an SSH public key"):
        run(PLUGIN.enroll(access(sshd_server, host_key="ssh-ed25519 not-base64!")))


def test_a_host_presenting_another_key_than_the_pinned_one_is_refused_before_any_login(
    sshd_server: SshdServer,
) -> None:
    other = public_key_line(generate_ssh_private_key())
    target = access(sshd_server, host_key=other)
    user = sshd_server.add_user(password="right-password-1")
    before = accepted_logins(sshd_server)
    for call in (
        PLUGIN.verify(target, user, Sensitive("right-password-1")),
        PLUGIN.rotate(target, user, password()),
        PLUGIN.elevate(target, user, "sudo", later()),
    ):
        with pytest.raises(TargetRejected, match="host key other than the pinned one") as info:
            run(call)
        assert info.value.retryable is False
    assert accepted_logins(sshd_server) == before
    assert can_login(sshd_server, user, "right-password-1")


def test_an_unreachable_target_is_a_retryable_rejection(sshd_server: SshdServer) -> None:
    target = access(sshd_server, port=free_port())
    with pytest.raises(TargetRejected) as info:
        run(PLUGIN.verify(target, "someone", password()))
    assert info.value.retryable is True


# -- verify and rotate --------------------------------------------------------------------------


def test_verify_is_true_for_the_right_password_or_key_and_false_otherwise(
    sshd_server: SshdServer, target: TargetAccess
) -> None:
    pw = password()
    user = sshd_server.add_user(password=pw.reveal())
    key = generate_ssh_private_key()
    run(PLUGIN.rotate(target, user, key))  # a key as well: both log in now
    assert run(PLUGIN.verify(target, user, pw)) is True
    assert run(PLUGIN.verify(target, user, key)) is True
    assert run(PLUGIN.verify(target, user, password())) is False
    assert run(PLUGIN.verify(target, user, generate_ssh_private_key())) is False
    assert run(PLUGIN.verify(target, f"jvnobody{secrets.token_hex(2)}", pw)) is False


def test_a_key_the_fixture_authorizes_lets_a_non_root_user_in(
    sshd_server: SshdServer, target: TargetAccess
) -> None:
    user = sshd_server.add_user()
    key = generate_ssh_private_key()
    subprocess.run(["usermod", "--password", "*", user], check=True)  # not locked
    assert run(PLUGIN.verify(target, user, key)) is False
    sshd_server.authorize_key(user, public_key_line(key))
    assert run(PLUGIN.verify(target, user, key)) is True


def test_rotate_of_a_password_uses_chpasswd_and_the_old_password_stops_working(
    sshd_server: SshdServer, target: TargetAccess
) -> None:
    old, new = password(), password()
    user = sshd_server.add_user(password=old.reveal())
    run(PLUGIN.rotate(target, user, new, current=old))
    assert not can_login(sshd_server, user, old)
    assert can_login(sshd_server, user, new)
    run(PLUGIN.rotate(target, user, new, current=new))  # idempotent
    assert can_login(sshd_server, user, new)
    assert new.reveal() not in sshd_server.log
    assert PLUGIN.secret_kind(new) == SecretKind.PASSWORD


def test_rotate_of_a_key_replaces_jitvaults_line_and_the_old_key_and_keeps_the_others(
    sshd_server: SshdServer, target: TargetAccess
) -> None:
    user = key_user(sshd_server)
    first = generate_ssh_private_key()  # the key the operator registered, not yet marked
    operator_line = public_key_line(generate_ssh_private_key()) + " operator@laptop"
    home = f"/home/{user}"
    os.makedirs(f"{home}/.ssh", mode=0o700)
    with open(f"{home}/.ssh/authorized_keys", "w") as f:
        f.write(f"# keys of {user}\n{operator_line}\n{public_key_line(first)} deploy@ci\n")
    subprocess.run(["chown", "-R", f"{user}:{user}", f"{home}/.ssh"], check=True)
    assert can_login(sshd_server, user, first)
    assert PLUGIN.secret_kind(first) == SecretKind.SSH_KEY

    second = generate_ssh_private_key()
    run(PLUGIN.rotate(target, user, second, current=first))
    assert not can_login(sshd_server, user, first)
    assert can_login(sshd_server, user, second)
    third = generate_ssh_private_key()
    run(PLUGIN.rotate(target, user, third, current=second))
    run(PLUGIN.rotate(target, user, third, current=second))  # idempotent
    assert not can_login(sshd_server, user, second)
    assert can_login(sshd_server, user, third)

    lines = authorized_keys(user).splitlines()
    assert lines == [f"# keys of {user}", operator_line, f"{public_key_line(third)} {KEY_MARK}"]
    path = f"{home}/.ssh/authorized_keys"
    st_ = os.stat(path)
    assert (st_.st_uid, mode_of(path)) == (pwd.getpwnam(user).pw_uid, 0o600)
    assert os.listdir(f"{home}/.ssh") == ["authorized_keys"]  # no temp file left


def test_a_refused_admin_login_is_not_retryable_and_the_error_carries_no_secret(
    sshd_server: SshdServer,
) -> None:
    wrong = generate_ssh_private_key()
    target = TargetAccess("web-1", access(sshd_server).options, "root", wrong)
    user = sshd_server.add_user(password="unchanged-password-1")
    new = password()
    with pytest.raises(TargetRejected) as info:
        run(PLUGIN.rotate(target, user, new))
    exc = info.value
    assert exc.retryable is False
    text = f"{exc} {exc!r} {exc.hint}"
    for value in (wrong.reveal(), new.reveal(), sshd_server.admin_key_text()):
        assert value not in text
    assert can_login(sshd_server, user, "unchanged-password-1")


def test_rotate_of_a_missing_user_fails_with_the_exit_status_not_the_remote_text(
    target: TargetAccess,
) -> None:
    new = password()
    with pytest.raises(TargetRejected, match=r"rotate failed \(exit status 1\)") as info:
        run(PLUGIN.rotate(target, f"jvghost{secrets.token_hex(2)}", new))
    assert "chpasswd" not in str(info.value)
    assert new.reveal() not in f"{info.value} {info.value.hint}"


def test_a_password_with_a_line_break_is_rejected_before_any_command(
    sshd_server: SshdServer, target: TargetAccess
) -> None:
    before = accepted_logins(sshd_server)
    with pytest.raises(ValidationError) as info:
        run(PLUGIN.rotate(target, "someone", Sensitive("first\nroot:owned")))
    assert "owned" not in str(info.value)
    assert accepted_logins(sshd_server) == before


# -- ephemeral users ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["password", "key"])
def test_create_account_makes_a_marked_user_with_groups_and_expiry_and_is_idempotent(
    sshd_server: SshdServer, target: TargetAccess, ephemeral: str, kind: str
) -> None:
    secret = password() if kind == "password" else generate_ssh_private_key()
    template = AccountTemplate("oncall", grant_roles=("adm", "users"))
    expires = datetime(2031, 5, 17, 22, 30, tzinfo=UTC)
    run(PLUGIN.create_account(target, template, ephemeral, secret, expires))
    run(PLUGIN.create_account(target, template, ephemeral, secret, expires))

    entry = subprocess.run(
        ["getent", "passwd", ephemeral], capture_output=True, text=True, check=True
    ).stdout.split(":")
    assert entry[4] == EPHEMERAL_MARK
    assert entry[6].strip() == "/bin/bash"
    assert os.path.isdir(entry[5])
    assert {"adm", "users"} <= groups_of(ephemeral)
    chage = subprocess.run(["chage", "-l", ephemeral], capture_output=True, text=True).stdout
    # Linux expires an account at the start of its expiry day: the day after the grant ends
    assert re.search(r"Account expires\s+: May 18, 2031", chage), chage
    assert can_login(sshd_server, ephemeral, secret)
    assert run(PLUGIN.verify(target, ephemeral, secret)) is True

    # a second grant's secret and groups replace the first's
    again = password() if kind == "password" else generate_ssh_private_key()
    run(PLUGIN.create_account(target, AccountTemplate("t2"), ephemeral, again, expires))
    assert not can_login(sshd_server, ephemeral, secret)
    assert can_login(sshd_server, ephemeral, again)
    assert groups_of(ephemeral) == {ephemeral}


def test_create_and_drop_refuse_a_user_jitvault_did_not_create(
    sshd_server: SshdServer, target: TargetAccess
) -> None:
    user = sshd_server.add_user(password="keep-me-1")
    template = AccountTemplate("t")
    with pytest.raises(TargetRejected, match="exit status 64") as info:
        run(PLUGIN.create_account(target, template, user, password(), later()))
    assert "not created by jitvault" in (info.value.hint or "")
    with pytest.raises(TargetRejected, match="exit status 64"):
        run(PLUGIN.drop_account(target, template, user))
    assert user_exists(user)
    assert can_login(sshd_server, user, "keep-me-1")


def test_create_account_with_a_missing_group_is_rejected_and_not_retryable(
    target: TargetAccess, ephemeral: str
) -> None:
    template = AccountTemplate("t", grant_roles=(f"jvnogroup{secrets.token_hex(2)}",))
    with pytest.raises(TargetRejected, match="exit status 6") as info:
        run(PLUGIN.create_account(target, template, ephemeral, password(), later()))
    assert info.value.retryable is False
    assert not user_exists(ephemeral)


@requires_sudo
def test_drop_account_kills_its_processes_removes_user_home_and_sudoers_and_is_idempotent(
    sshd_server: SshdServer, target: TargetAccess, ephemeral: str
) -> None:
    template = AccountTemplate("oncall")
    key = generate_ssh_private_key()
    run(PLUGIN.create_account(target, template, ephemeral, key, later()))
    run(PLUGIN.elevate(target, ephemeral, "sudo", later()))
    home = f"/home/{ephemeral}"
    sleeper = subprocess.Popen(["runuser", "-u", ephemeral, "--", "sleep", "300"])
    try:
        run(PLUGIN.drop_account(target, template, ephemeral))
        assert sleeper.wait(10) != 0  # killed
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait(5)
    assert not user_exists(ephemeral)
    assert not os.path.exists(home)
    assert not os.path.exists(sudoers_file(ephemeral))
    assert not can_login(sshd_server, ephemeral, key)
    run(PLUGIN.drop_account(target, template, ephemeral))  # gone already: no error
    assert not user_exists(ephemeral)


# -- elevation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["group:users", "users"])
def test_group_elevation_and_its_revoke_are_idempotent(
    sshd_server: SshdServer, target: TargetAccess, role: str
) -> None:
    user = sshd_server.add_user()
    assert "users" not in groups_of(user)
    run(PLUGIN.elevate(target, user, role, later()))
    run(PLUGIN.elevate(target, user, role, later()))
    assert "users" in groups_of(user)
    run(PLUGIN.revoke(target, user, role))
    run(PLUGIN.revoke(target, user, role))
    assert "users" not in groups_of(user)


def test_has_role_tells_a_group_membership_held_now_and_is_false_for_missing_users_or_groups(
    sshd_server: SshdServer, target: TargetAccess
) -> None:
    user = sshd_server.add_user()
    ghost = f"jvghost{secrets.token_hex(2)}"
    assert run(PLUGIN.has_role(target, user, "users")) is False
    subprocess.run(["gpasswd", "--add", user, "users"], capture_output=True, check=True)
    for role in ("users", "group:users"):
        assert run(PLUGIN.has_role(target, user, role)) is True
        assert run(PLUGIN.has_role(target, user, role)) is True  # read only: asked twice
    assert run(PLUGIN.has_role(target, user, "adm")) is False
    assert run(PLUGIN.has_role(target, user, user)) is True  # its own primary group
    assert run(PLUGIN.has_role(target, user, ghost)) is False
    assert run(PLUGIN.has_role(target, ghost, "users")) is False
    assert "users" in groups_of(user)


@pytest.fixture
def sudo_user(sshd_server: SshdServer) -> Iterator[str]:
    """A fresh Linux user whose jitvault sudoers drop-in, if a test left one, is removed."""
    user = sshd_server.add_user()
    yield user
    if os.path.exists(sudoers_file(user)):
        os.remove(sudoers_file(user))


@requires_sudo
def test_has_role_for_sudo_is_the_line_in_jitvaults_dropin_only(
    target: TargetAccess, sudo_user: str
) -> None:
    user, narrow = sudo_user, "sudo:ALL=(root) NOPASSWD: /usr/bin/id"
    assert run(PLUGIN.has_role(target, user, "sudo")) is False
    run(PLUGIN.elevate(target, user, narrow, later()))
    assert run(PLUGIN.has_role(target, user, narrow)) is True
    assert run(PLUGIN.has_role(target, user, "sudo")) is False
    run(PLUGIN.revoke(target, user, narrow))
    assert run(PLUGIN.has_role(target, user, narrow)) is False


def _sudo_as(user: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", user, "--", "sudo", "-n", *command],
        capture_output=True,
        text=True,
        check=False,
    )


@requires_sudo
def test_sudo_elevation_writes_a_checked_dropin_that_works_and_revoke_removes_it(
    sshd_server: SshdServer, target: TargetAccess
) -> None:
    user = sshd_server.add_user()
    narrow = "sudo:ALL=(root) NOPASSWD: /usr/bin/id"
    try:
        assert _sudo_as(user, "/usr/bin/id", "-u").returncode != 0
        for _ in range(2):
            run(PLUGIN.elevate(target, user, narrow, later()))
            run(PLUGIN.elevate(target, user, "sudo", later()))
        path = sudoers_file(user)
        assert sudoers_lines(user) == [
            f"{user} ALL=(root) NOPASSWD: /usr/bin/id",
            f"{user} ALL=(ALL:ALL) NOPASSWD: ALL",
        ]
        assert mode_of(path) == 0o440
        assert os.stat(path).st_uid == 0
        assert _sudo_as(user, "/usr/bin/id", "-u").stdout.strip() == "0"
        assert [n for n in os.listdir("/etc/sudoers.d") if n.startswith(".jitvault")] == []

        for _ in range(2):
            run(PLUGIN.revoke(target, user, "sudo"))
        assert sudoers_lines(user) == [f"{user} ALL=(root) NOPASSWD: /usr/bin/id"]
        assert _sudo_as(user, "/bin/true").returncode != 0  # only id is left
        for _ in range(2):
            run(PLUGIN.revoke(target, user, narrow))
        assert not os.path.exists(path)
        assert _sudo_as(user, "/usr/bin/id", "-u").returncode != 0
    finally:
        if os.path.exists(sudoers_file(user)):
            os.remove(sudoers_file(user))


@requires_sudo
def test_a_sudo_rule_visudo_rejects_changes_nothing(
    sshd_server: SshdServer, target: TargetAccess
) -> None:
    user = sshd_server.add_user()
    with pytest.raises(TargetRejected, match="exit status 66") as info:
        run(PLUGIN.elevate(target, user, "sudo:ALL=(root) NOPASSWD: ALL, ALL ALL", later()))
    assert "visudo" in (info.value.hint or "")
    assert not os.path.exists(sudoers_file(user))
    assert [n for n in os.listdir("/etc/sudoers.d") if n.startswith(".jitvault")] == []


@requires_sudo
def test_elevation_of_a_missing_user_or_group_is_rejected_and_revoke_of_either_is_fine(
    sshd_server: SshdServer, target: TargetAccess
) -> None:
    user = sshd_server.add_user()
    ghost = f"jvghost{secrets.token_hex(2)}"
    for who, role, status in ((ghost, "users", 65), (user, ghost, 68), (ghost, "sudo", 65)):
        with pytest.raises(TargetRejected, match=f"exit status {status}") as info:
            run(PLUGIN.elevate(target, who, role, later()))
        assert info.value.retryable is False
        run(PLUGIN.revoke(target, who, role))
    assert not os.path.exists(sudoers_file(ghost))


@requires_sudo
def test_a_non_root_admin_runs_the_commands_through_sudo(
    sshd_server: SshdServer, target: TargetAccess, ephemeral: str
) -> None:
    admin = key_user(sshd_server)
    key = generate_ssh_private_key()
    run(PLUGIN.rotate(target, admin, key))  # its authorized key, installed as root
    with open(sudoers_file(admin), "w") as f:
        f.write(f"{admin} ALL=(ALL:ALL) NOPASSWD: ALL\n")
    os.chmod(sudoers_file(admin), 0o440)
    try:
        target = TargetAccess("web-1", access(sshd_server).options, admin, key)
        secret = password()
        run(PLUGIN.create_account(target, AccountTemplate("t"), ephemeral, secret, later()))
        assert can_login(sshd_server, ephemeral, secret)
        run(PLUGIN.drop_account(target, AccountTemplate("t"), ephemeral))
        assert not user_exists(ephemeral)
    finally:
        os.remove(sudoers_file(admin))


# -- hostile names ------------------------------------------------------------------------------

HOSTILE_FRAGMENTS = [
    "'",
    '"',
    ";",
    "$(id)",
    "`id`",
    "$USER",
    " ",
    "\t",
    "\n",
    "\x00",
    "|",
    "&",
    ">",
    "*",
    "..",
    "/",
    "\\",
    "-",
    "--help",
    ":",
    ",",
    "root",
    "é",
    "名前",
    "🙂",
    "\u200b",
    "A",
    "x" * 33,
]
hostile_names = st.lists(
    st.one_of(st.sampled_from(HOSTILE_FRAGMENTS), st.text(max_size=6)), min_size=0, max_size=6
).map("".join)


def _linux_name(name: str) -> bool:
    return re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", name) is not None


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=hostile_names)
def test_hostile_names_are_rejected_before_any_command_runs(
    sshd_server: SshdServer, name: str
) -> None:
    if _linux_name(name):
        return  # a valid name: nothing hostile about it
    target = access(sshd_server)
    before = accepted_logins(sshd_server)
    template = AccountTemplate("t", grant_roles=("adm",))
    bad_group = AccountTemplate("t", grant_roles=(name,))
    calls = [
        PLUGIN.verify(target, name, password()),
        PLUGIN.rotate(target, name, password()),
        PLUGIN.create_account(target, template, name, password(), later()),
        PLUGIN.create_account(target, bad_group, "jvsafe", password(), later()),
        PLUGIN.drop_account(target, template, name),
        PLUGIN.elevate(target, name, "users", later()),
        PLUGIN.elevate(target, "jvsafe", name, later()),
        PLUGIN.elevate(target, "jvsafe", f"group:{name}", later()),
        PLUGIN.revoke(target, name, "sudo"),
        PLUGIN.revoke(target, "jvsafe", name),
        PLUGIN.has_role(target, name, "users"),
        PLUGIN.has_role(target, "jvsafe", name),
    ]
    if "=" not in name:  # else it may be a sudoers rule, which visudo decides on
        calls.append(PLUGIN.elevate(target, "jvsafe", f"sudo:{name}", later()))
    for call in calls:
        with pytest.raises(ValidationError):
            run(call)
    assert accepted_logins(sshd_server) == before  # not even a login
    if "\x00" not in name:
        assert not user_exists(name)


@pytest.mark.parametrize(
    "rule",
    [
        "ALL=(ALL) NOPASSWD: ALL\nroot ALL=(ALL) ALL",
        "ALL=(ALL) ALL # comment",
        "ALL=(ALL) /bin/sh \\",
        "ALL=(ALL) /bin/echo $(id)",
        "ALL=(ALL) /bin/echo `id`",
        "ALL=(ALL) /bin/cat /etc/shadow; rm -rf /",
        "/usr/bin/id",  # not a rule: no HOSTS=
        "",
    ],
)
def test_sudo_rules_outside_the_safe_alphabet_are_rejected_before_any_command(
    sshd_server: SshdServer, rule: str
) -> None:
    before = accepted_logins(sshd_server)
    with pytest.raises(ValidationError, match="sudo rule"):
        run(PLUGIN.elevate(access(sshd_server), "jvsafe", f"sudo:{rule}", later()))
    assert accepted_logins(sshd_server) == before


def test_a_name_of_exactly_32_characters_is_used_whole_not_truncated(
    target: TargetAccess,
) -> None:
    name = "jv" + secrets.token_hex(15)
    assert len(name) == 32
    try:
        run(PLUGIN.create_account(target, AccountTemplate("t"), name, password(), later()))
        assert user_exists(name)
        run(PLUGIN.drop_account(target, AccountTemplate("t"), name))
        assert not user_exists(name)
        with pytest.raises(ValidationError):
            run(
                PLUGIN.create_account(target, AccountTemplate("t"), name + "x", password(), later())
            )
    finally:
        subprocess.run(["userdel", "--remove", name], capture_output=True, check=False)

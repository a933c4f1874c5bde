"""Logging in to the test sshd as an account, with paramiko (a client independent of the
asyncssh the plugin uses), and reading what the plugin left on the host."""

from __future__ import annotations

import base64
import io
import os
import pwd
import subprocess

import paramiko
import pytest

from jitvault.domain import Sensitive
from jitvault_ssh.connect import public_key_line
from tests.sshd import SshdServer

#: the sudo elevation tests need Debian's sudo (visudo) on the test host (scripts/test installs it)
requires_sudo = pytest.mark.skipif(
    not os.path.exists("/usr/sbin/visudo"), reason="needs sudo (visudo): apt-get install sudo"
)


def _pkey(secret: str) -> paramiko.PKey:
    return paramiko.Ed25519Key.from_private_key(io.StringIO(secret))


def can_login(server: SshdServer, user: str, secret: Sensitive[str] | str) -> bool:
    """Does ``user`` get in with ``secret`` (a password, or an Ed25519 private key)? The host
    key must be the server's own."""
    value = secret.reveal() if isinstance(secret, Sensitive) else secret
    client = paramiko.SSHClient()
    algorithm, blob = server.host_key_line.split()
    client.get_host_keys().add(
        f"[{server.host}]:{server.port}",
        algorithm,
        paramiko.PKey.from_type_string(algorithm, base64.b64decode(blob)),
    )
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    is_key = "PRIVATE KEY-----" in value
    auth: dict[str, object] = {"pkey": _pkey(value)} if is_key else {"password": value}
    try:
        client.connect(
            server.host,
            server.port,
            username=user,
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
            banner_timeout=10,
            auth_timeout=10,
            **auth,  # type: ignore[arg-type]
        )
    except paramiko.AuthenticationException:
        return False
    finally:
        client.close()
    return True


def install_key(user: str, secret: Sensitive[str], comment: str = "deploy@ci") -> None:
    """The operator's own set-up of a key account (before jitvault knows it): a password field
    that is not locked (sshd refuses keys of locked accounts) and the key in authorized_keys."""
    subprocess.run(["usermod", "--password", "*", user], check=True)
    ssh_dir = f"/home/{user}/.ssh"
    os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
    with open(f"{ssh_dir}/authorized_keys", "w") as f:
        f.write(f"{public_key_line(secret)} {comment}\n")
    subprocess.run(["chown", "-R", f"{user}:{user}", ssh_dir], check=True)


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def groups_of(name: str) -> set[str]:
    out = subprocess.run(["id", "-nG", name], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def sudoers_file(user: str) -> str:
    return f"/etc/sudoers.d/jitvault-{user}"


def sudoers_lines(user: str) -> list[str]:
    path = sudoers_file(user)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().splitlines()


def authorized_keys(user: str) -> str:
    home = pwd.getpwnam(user).pw_dir
    with open(os.path.join(home, ".ssh", "authorized_keys")) as f:
        return f.read()


def accepted_logins(server: SshdServer) -> int:
    """How many logins the server accepted so far (its VERBOSE log)."""
    return server.log.count("Accepted ")


__all__ = [
    "accepted_logins",
    "authorized_keys",
    "can_login",
    "groups_of",
    "install_key",
    "requires_sudo",
    "sudoers_file",
    "sudoers_lines",
    "user_exists",
]

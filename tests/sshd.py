"""A real OpenSSH server of the tests' own (``sshd_server`` fixture, session scope).

Debian's ``sshd`` runs from a private tmp dir with its own config, host key, pid file and log,
on a free loopback port. Authorized keys are read from the user's ``~/.ssh/authorized_keys``
(what key rotation changes) and from ``<dir>/keys/<user>`` (where the fixture puts the admin's
key, so root's own files are never touched). Password logins go through ``/etc/shadow``
(``UsePAM no``), so a password set with ``chpasswd`` is what logs in.

Linux users made with :meth:`SshdServer.add_user` are removed (``userdel -r``) at teardown.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import leftovers
from tests.support import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
TEST_USER_PREFIX = "jvt"

_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/ssh_host_ed25519_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile .ssh/authorized_keys {dir}/keys/%u
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AllowTcpForwarding yes
X11Forwarding no
PrintMotd no
MaxStartups 200:30:400
MaxSessions 100
LogLevel VERBOSE
Subsystem sftp internal-sftp
# the target takes any variable: what reaches it is the SSH proxy's allow-list
AcceptEnv *
"""


def sshd_available() -> bool:
    return os.path.exists(SSHD) and os.geteuid() == 0


@dataclass
class SshdServer:
    """One running sshd: where it listens, its host key, and the admin (root) key pair."""

    dir: Path
    port: int
    pid: int
    host_key_line: str  # "ssh-ed25519 AAAA..." as the server presents it
    admin_key: Path  # root's private key (OpenSSH format), authorized for this sshd only
    users: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def log(self) -> str:
        path = self.dir / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def admin_key_text(self) -> str:
        return self.admin_key.read_text()

    def add_user(self, name: str | None = None, password: str | None = None) -> str:
        """Create a Linux user (removed at teardown); set its password if given."""
        name = name or f"{TEST_USER_PREFIX}{secrets.token_hex(4)}"
        subprocess.run(
            [
                "useradd",
                "--create-home",
                "--shell",
                "/bin/bash",
                "--comment",
                leftovers.user_comment(),  # a killed run's users are removed by the next run
                name,
            ],
            check=True,
            capture_output=True,
        )
        self.users.append(name)
        if password is not None:
            self.set_password(name, password)
        return name

    def set_password(self, name: str, password: str) -> None:
        # through stdin: a password never goes on a command line
        subprocess.run(
            ["chpasswd"], input=f"{name}:{password}\n", text=True, check=True, capture_output=True
        )

    def authorize_key(self, user: str, public_key_line: str) -> None:
        """Let ``user`` in with a key through the fixture's own authorized-keys file."""
        path = self.dir / "keys" / user
        with path.open("a") as f:
            f.write(public_key_line.strip() + "\n")

    def remove_users(self) -> None:
        for name in self.users:
            subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True, check=False)
            subprocess.run(["userdel", "--remove", "--force", name], capture_output=True)
        self.users.clear()

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"sshd did not listen on {port} within {timeout}s")


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )


@contextlib.contextmanager
def start_sshd(extra_config: str = "", port: int | None = None) -> Iterator[SshdServer]:
    """Start an sshd on a free loopback port (or ``port``: e.g. a re-keyed host taking over
    another's address); stop it (by pid) and remove its users after."""
    base = Path(tempfile.mkdtemp(prefix="jv-sshd-"))
    # sshd reads {dir}/keys/%u as the logging-in user: a non-root user must be able to traverse
    # the directory (mkdtemp makes it 0700). Nothing secret is readable: ssh-keygen writes the
    # private keys 0600, and the rest are public keys and the config.
    base.chmod(0o755)
    leftovers.mark_dir(base)  # a killed run's sshd is stopped and its dir removed by the next
    (base / "keys").mkdir()
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    _keygen(base / "ssh_host_ed25519_key", "jitvault-test-host")
    _keygen(base / "admin_key", "jitvault-test-admin")
    port = port or free_port()
    (base / "sshd_config").write_text(_CONFIG.format(port=port, dir=base) + extra_config)
    (base / "keys" / "root").write_text((base / "admin_key.pub").read_text())
    proc = subprocess.Popen(
        [SSHD, "-D", "-f", str(base / "sshd_config"), "-E", str(base / "sshd.log")],
        stdin=subprocess.DEVNULL,
    )
    host_key = (base / "ssh_host_ed25519_key.pub").read_text().split()
    server = SshdServer(
        dir=base,
        port=port,
        pid=proc.pid,
        host_key_line=f"{host_key[0]} {host_key[1]}",
        admin_key=base / "admin_key",
    )
    try:
        _wait_port(port, proc)
        yield server
    finally:
        server.remove_users()
        server.stop()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd_server() -> Iterator[SshdServer]:
    if not sshd_available():
        pytest.skip("needs root and Debian's openssh-server (/usr/sbin/sshd)")
    with start_sshd() as server:
        yield server


def valid_username(name: str) -> bool:
    return re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", name) is not None


__all__ = ["SshdServer", "sshd_available", "sshd_server", "start_sshd", "valid_username"]

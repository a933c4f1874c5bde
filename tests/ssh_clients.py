"""SSH clients the tests run through the proxy: OpenSSH (``ssh``, ``scp``, ``sftp`` via sshpass)
and paramiko, with what ``jitvault connect --json`` printed."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paramiko

SSH_OPTIONS = [
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR", "-o", "PubkeyAuthentication=no", "-o", "ConnectTimeout=15",
    "-o", "PreferredAuthentications=password,keyboard-interactive",
    "-o", "NumberOfPasswordPrompts=1",
]  # fmt: skip


def openssh(
    tool: str,
    info: dict[str, Any],
    *args: str,
    stdin: str | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run OpenSSH's ``ssh``/``scp``/``sftp`` with the token as the password (sshpass reads it
    from its environment: it is on no command line)."""
    port_flag = "-p" if tool == "ssh" else "-P"
    env = {**os.environ, "SSHPASS": info["password"]}
    return subprocess.run(
        ["sshpass", "-e", tool, port_flag, str(info["port"]), *SSH_OPTIONS, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


def dest(info: dict[str, Any]) -> str:
    """The destination OpenSSH logs in to: the proxy user at loopback."""
    return f"{info['user']}@127.0.0.1"


class RecordingSocket:
    """A TCP socket for paramiko that keeps every byte the proxy sent."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.received = bytearray()

    def recv(self, n: int) -> bytes:
        data = self.sock.recv(n)
        self.received += data
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def paramiko_client(info: dict[str, Any]) -> tuple[paramiko.Transport, RecordingSocket]:
    """A paramiko transport logged in through the proxy, over a socket that records what came."""
    sock = RecordingSocket(info["port"])
    transport = paramiko.Transport(sock)  # type: ignore[arg-type]
    transport.start_client(timeout=15)
    transport.auth_password(info["user"], info["password"])
    return transport, sock


def streaming_client(info: dict[str, Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """A paramiko client running ``yes`` (endless output), reading as fast as it can."""
    out: dict[str, Any] = {"bytes": 0, "stderr": b"", "status": None, "at": None}
    started = threading.Event()

    def run() -> None:
        transport, _ = paramiko_client(info)
        try:
            chan = transport.open_session()
            chan.exec_command("yes")
            chan.settimeout(30)
            while True:
                data = chan.recv(65536)
                if not data:
                    break
                out["bytes"] += len(data)
                started.set()
            out["at"] = time.monotonic()
            while not chan.exit_status_ready() and time.monotonic() - out["at"] < 5:
                time.sleep(0.01)
            while chan.recv_stderr_ready():
                out["stderr"] += chan.recv_stderr(65536)
            out["status"] = chan.recv_exit_status() if chan.exit_status_ready() else None
        except (OSError, paramiko.SSHException) as exc:
            out["at"] = out["at"] or time.monotonic()
            out["error"] = repr(exc)
        finally:
            started.set()
            transport.close()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    assert started.wait(30)
    assert out["bytes"] > 0, out
    return th, out

"""Logging in to an SSH target: the one place that opens client connections to targets.

Used by the lifecycle (as the target's admin, or as an account to verify it) and by the session
proxy (as the grant's account). The target's host key must be pinned and must match; the secret
is a password or an OpenSSH/PEM private key, revealed only at the line that logs in. Errors are
:class:`~jitvault.plugin_api.TargetRejected` and never carry the secret or the server's text.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncssh
import pydantic

from jitvault.domain import Sensitive
from jitvault.errors import ValidationError
from jitvault.plugin_api import TargetAccess, TargetRejected
from jitvault_ssh.options import SshTargetOptions

_KEY_MARKER = "PRIVATE KEY-----"


_REKEYED_HINT = (
    "make sure the host is the right one; if it was re-keyed on purpose, register the target"
    " again under a new name (re-pinning an existing target is not supported yet)"
)


class LoginRefused(TargetRejected):
    """The target refused the credential (not retryable: the same secret will fail again)."""


def options_of(target: TargetAccess) -> SshTargetOptions:
    """The validated options of ``target`` (validated again: stored data is not trusted)."""
    try:
        return SshTargetOptions.model_validate({**target.options, "kind": "ssh"})
    except pydantic.ValidationError:
        raise ValidationError(
            f"invalid options for ssh target {target.name!r}",
            hint="host, port, host_key, connect_timeout",
        ) from None


def is_private_key(secret: Sensitive[str]) -> bool:
    """Is this secret a private key (else it is a password)?"""
    return _KEY_MARKER in secret.reveal()


def public_key_line(secret: Sensitive[str]) -> str:
    """The ``authorized_keys`` line ("ssh-ed25519 AAAA...") of a private-key secret."""
    try:
        key = asyncssh.import_private_key(secret.reveal())
    except (asyncssh.KeyImportError, ValueError):
        raise ValidationError("the secret is not a private key asyncssh can read") from None
    return key.export_public_key("openssh").decode().strip()


def public_key_blob(secret: Sensitive[str]) -> tuple[str, str]:
    """``(algorithm, base64 blob)`` of the public half of a private-key secret."""
    algorithm, blob = public_key_line(secret).split()[:2]
    return algorithm, blob


def pinned_key(options: SshTargetOptions, target_name: str) -> asyncssh.SSHKey:
    if not options.host_key:
        raise TargetRejected(
            f"ssh target {target_name!r} has no pinned host key",
            hint="register it with 'jitvault target add ssh ...', which pins its host key",
        )
    try:
        return asyncssh.import_public_key(options.host_key)
    except (asyncssh.KeyImportError, ValueError):
        raise TargetRejected(
            f"the pinned host key of ssh target {target_name!r} is invalid"
        ) from None


async def fetch_host_key(host: str, port: int, wait: float = 10.0) -> str:
    """The host key a server presents now ("ssh-ed25519 AAAA..."), for pinning at registration."""
    try:
        key = await asyncio.wait_for(asyncssh.get_server_host_key(host, port, config=[]), wait)
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise TargetRejected(
            f"could not read the host key of {host}:{port} ({type(exc).__name__})",
            hint="check --host and --port, and that sshd is running",
            retryable=True,
        ) from None
    if key is None:
        raise TargetRejected(f"{host}:{port} presented no host key")
    algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
    return f"{algorithm} {blob}"


async def connect(
    target: TargetAccess,
    username: str,
    secret: Sensitive[str],
    **extra: Any,
) -> asyncssh.SSHClientConnection:
    """Log in to ``target`` as ``username`` with ``secret`` (password or private key).

    Raises :class:`TargetRejected`: not retryable when the target refused the credential or
    presented another host key than the pinned one; retryable when it could not be reached.
    """
    opts = options_of(target)
    host_key = pinned_key(opts, target.name)
    auth: dict[str, Any]
    if is_private_key(secret):
        try:
            client_key = asyncssh.import_private_key(secret.reveal())
        except (asyncssh.KeyImportError, ValueError):
            raise TargetRejected(
                f"the vaulted key for {username!r} on {target.name!r} cannot be read"
            ) from None
        auth = {"client_keys": [client_key], "preferred_auth": "publickey"}
    else:
        auth = {
            "password": secret.reveal(),
            "client_keys": None,
            "preferred_auth": "password,keyboard-interactive",
        }
    try:
        return await asyncio.wait_for(
            asyncssh.connect(
                opts.host,
                opts.port,
                username=username,
                known_hosts=([host_key], [], []),
                server_host_key_algs=[host_key.get_algorithm()],
                agent_path=None,
                config=[],
                **auth,
                **extra,
            ),
            opts.connect_timeout,
        )
    except asyncssh.HostKeyNotVerifiable:
        raise TargetRejected(
            f"ssh target {target.name!r} presented a host key other than the pinned one",
            hint=_REKEYED_HINT,
        ) from None
    except asyncssh.PermissionDenied:
        raise LoginRefused(f"{target.name!r} refused the login of {username!r}") from None
    except asyncssh.KeyExchangeFailed:
        raise TargetRejected(
            f"ssh target {target.name!r} offered no host key of the pinned type",
            hint=_REKEYED_HINT,
        ) from None
    except (OSError, TimeoutError, asyncssh.Error) as exc:
        raise TargetRejected(
            f"could not reach ssh target {target.name!r} ({type(exc).__name__})",
            retryable=True,
        ) from None


__all__ = [
    "LoginRefused",
    "connect",
    "fetch_host_key",
    "is_private_key",
    "options_of",
    "pinned_key",
    "public_key_blob",
    "public_key_line",
]

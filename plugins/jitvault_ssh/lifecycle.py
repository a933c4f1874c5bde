"""Credential lifecycle on Linux targets over SSH: verify, rotate, ephemeral users, elevation.

Every operation logs in (through :mod:`.connect`: pinned host key) as the target's administrator
(root, or a user with password-less ``sudo``: commands then run under ``sudo -n``), runs a few
short remote commands, and is idempotent and safe to retry after a crash between any two of them.

Rules kept here:

* Names are validated before any command runs (Linux rules: ``^[a-z_][a-z0-9_-]{0,31}$``,
  rejected, never truncated) and every argument is quoted with :func:`shlex.quote`. The shell
  scripts are constants; what varies reaches them as quoted positional arguments or on stdin.
* Secrets go on the channel's stdin (``chpasswd`` reads ``user:password``), never into a command
  line. Only public keys are written to ``authorized_keys``.
* Errors are :class:`~jitvault.plugin_api.TargetRejected` with the remote exit status and what it
  means, never the remote stderr (it could echo a value) nor a chained exception.
* Ephemeral users carry jitvault's mark in their GECOS field; an existing user without it is
  neither taken over by :func:`create_account` nor removed by :func:`drop_account`.
* jitvault's ``authorized_keys`` line ends with :data:`KEY_MARK`; rotation replaces that line
  (and the line of the key being rotated away) atomically, as the account itself, keeping every
  other line.

Elevation roles (the ``role`` of :func:`elevate` / :func:`revoke`):

* ``group:NAME`` or a bare ``NAME``: membership of the Linux group ``NAME`` (``gpasswd -a/-d``);
* ``sudo``: ``USER ALL=(ALL:ALL) NOPASSWD: ALL`` in ``/etc/sudoers.d/jitvault-USER``;
* ``sudo:RULE``: ``USER RULE`` there, ``RULE`` being the right-hand side of a sudoers rule,
  e.g. ``sudo:ALL=(root) NOPASSWD: /usr/bin/systemctl restart nginx``. The drop-in is checked
  with ``visudo -c -f`` before it is moved into place; revoking removes the line (and the file
  when it is empty). NOPASSWD is needed in practice: jitvault users never know the password.
"""

from __future__ import annotations

import asyncio
import re
import shlex
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncssh

from jitvault.domain import Sensitive
from jitvault.errors import ValidationError
from jitvault.plugin_api import AccountTemplate, TargetAccess, TargetRejected
from jitvault.plugin_api.faults import crash_point
from jitvault_ssh.connect import (
    LoginRefused,
    connect,
    is_private_key,
    public_key_blob,
)

#: Linux user and group names (useradd's portable rule); longer names are rejected
NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
SHELL_RE = re.compile(r"/[A-Za-z0-9/_.+-]{1,127}")
#: the right-hand side of a sudoers rule: printable, no comment sign, no line continuation
SUDO_RULE_RE = re.compile(r"[A-Za-z0-9 _.,:=()/*@+-]{1,512}")
FULL_SUDO_RULE = "ALL=(ALL:ALL) NOPASSWD: ALL"
#: the GECOS field of the users create_account makes; drop/update require it
EPHEMERAL_MARK = "jitvault ephemeral account"
#: the comment that ends jitvault's line in ~/.ssh/authorized_keys
KEY_MARK = "jitvault-managed"
DEFAULT_SHELL = "/bin/bash"
SUDOERS_DIR = "/etc/sudoers.d"
#: upper bound of one remote command, client side
COMMAND_TIMEOUT_SECONDS = 60.0
#: how many times drop_account kills the user's processes before userdel gives up
DROP_ATTEMPTS = 10

# exit statuses of our own scripts (64+, clear of the tools' own codes)
_NOT_OURS = 64
_NO_USER = 65
_SUDOERS_INVALID = 66
_NO_HOME = 67
_NO_GROUP = 68
_NO_SUDO = 69

_EXIT_HINTS = {
    _NOT_OURS: "a user of that name exists and was not created by jitvault",
    _NO_USER: "no such user on the target",
    _SUDOERS_INVALID: "visudo rejected the sudoers rule; nothing was changed",
    _NO_HOME: "the account has no home directory for ~/.ssh/authorized_keys",
    _NO_GROUP: "no such group on the target",
    _NO_SUDO: "sudo (visudo, /etc/sudoers.d) is not installed on the target",
}

# -- remote scripts: constant text, run as `sh -c SCRIPT sh ARG...` --------------------------

# $1 user, $2 mark, $3 expiry date, $4 groups (comma list, may be empty), $5 shell,
# $6 "key" (no password login: hash '*') or "password" (set next by chpasswd)
_ENSURE_USER = r"""
set -eu
user=$1 mark=$2 expire=$3 groups=$4 shell=$5 auth=$6
if entry=$(getent passwd "$user"); then
  [ "$(printf '%s\n' "$entry" | cut -d: -f5)" = "$mark" ] || exit 64
  usermod --expiredate "$expire" --groups "$groups" --shell "$shell" "$user"
  if [ "$auth" = key ]; then usermod --password '*' "$user"; fi
else
  useradd --create-home --comment "$mark" --shell "$shell" --expiredate "$expire" \
    --groups "$groups" --password '*' "$user"
fi
"""

# $1 user, $2 mark: make sure nobody logs in again (exit 0 if the user is gone)
_LOCK_USER = r"""
set -eu
user=$1 mark=$2
entry=$(getent passwd "$user") || exit 0
[ "$(printf '%s\n' "$entry" | cut -d: -f5)" = "$mark" ] || exit 64
usermod --lock --expiredate 1 "$user"
"""

# $1 user, $2 mark, $3 attempts: kill its processes, remove it with its home and its sudoers
# drop-in; userdel refuses (8) while a process still runs: kill again
_REMOVE_USER = r"""
set -u
user=$1 mark=$2 attempts=$3
if entry=$(getent passwd "$user"); then
  [ "$(printf '%s\n' "$entry" | cut -d: -f5)" = "$mark" ] || exit 64
  n=0
  while :; do
    pkill -KILL -u "$user"
    userdel --remove "$user" 2>/dev/null
    rc=$?
    [ "$rc" -eq 0 ] || [ "$rc" -eq 6 ] && break
    n=$((n + 1))
    [ "$rc" -eq 8 ] && [ "$n" -lt "$attempts" ] || exit "$rc"
    sleep 0.2
  done
fi
rm -f "/etc/sudoers.d/jitvault-$user"
"""

# run as the account itself (runuser): replace jitvault's line (ending with the mark $1) and
# the line of the old key ($2, may be empty) with the line on stdin, through a temp file renamed
# over the original
_SET_AUTHORIZED_KEY = r"""
set -eu
umask 077
mark=" $1" old=${2:-}
home=$(getent passwd "$(id -un)" | cut -d: -f6)
[ -n "$home" ] && [ -d "$home" ] || exit 67
mkdir -p "$home/.ssh"
chmod 700 "$home/.ssh"
keys=$home/.ssh/authorized_keys
IFS= read -r line || [ -n "$line" ]
tmp=$(mktemp "$home/.ssh/.authorized_keys.jitvault.XXXXXX")
trap 'rm -f "$tmp"' EXIT
if [ -f "$keys" ]; then
  if [ -n "$old" ]; then
    grep -v -F -e "$mark" -e "$old" "$keys" >"$tmp" || [ $? -eq 1 ]
  else
    grep -v -F -e "$mark" "$keys" >"$tmp" || [ $? -eq 1 ]
  fi
fi
printf '%s\n' "$line" >>"$tmp"
chmod 600 "$tmp"
mv -f "$tmp" "$keys"
trap - EXIT
"""

# $1 user, $2 group
_ADD_TO_GROUP = r"""
set -eu
getent passwd "$1" >/dev/null || exit 65
getent group "$2" >/dev/null || exit 68
gpasswd --add "$1" "$2" >/dev/null
"""

# $1 user, $2 group: no error if either is gone or the user is not a member
_REMOVE_FROM_GROUP = r"""
set -eu
getent passwd "$1" >/dev/null || exit 0
members=$(getent group "$2" | cut -d: -f4) || exit 0
case ",$members," in
  *",$1,"*) gpasswd --delete "$1" "$2" >/dev/null ;;
esac
"""

# $1 user, $2 group: exit 0 if the user is in the group now (primary or supplementary), 1 if
# not or if the user is gone
_IN_GROUP = r"""
set -eu
getent passwd "$1" >/dev/null || exit 1
id -nG "$1" | tr ' ' '\n' | grep -q -x -F -e "$2"
"""

# $1 user; stdin: the full sudoers line. Exit 0 if jitvault's drop-in holds it, 1 if not.
_HAS_SUDOERS_RULE = r"""
set -eu
IFS= read -r rule || [ -n "$rule" ]
file=/etc/sudoers.d/jitvault-$1
[ -f "$file" ] || exit 1
grep -q -x -F -e "$rule" "$file"
"""

# $1 "add" or "remove", $2 user; stdin: the full sudoers line. The temp file's name has a dot,
# so sudo's @includedir ignores it until visudo has checked it and it is renamed into place.
_SUDOERS_RULE = r"""
set -eu
mode=$1 user=$2
IFS= read -r rule || [ -n "$rule" ]
file=/etc/sudoers.d/jitvault-$user
if [ "$mode" = add ]; then
  command -v visudo >/dev/null && [ -d /etc/sudoers.d ] || exit 69
  getent passwd "$user" >/dev/null || exit 65
elif [ ! -f "$file" ]; then
  exit 0
fi
tmp=$(mktemp /etc/sudoers.d/.jitvault.XXXXXX)
trap 'rm -f "$tmp"' EXIT
if [ -f "$file" ]; then
  grep -v -x -F -e "$rule" "$file" >"$tmp" || [ $? -eq 1 ]
fi
if [ "$mode" = add ]; then printf '%s\n' "$rule" >>"$tmp"; fi
if [ ! -s "$tmp" ]; then
  rm -f "$file"
  exit 0
fi
chmod 0440 "$tmp"
visudo -c -q -f "$tmp" >/dev/null 2>&1 || exit 66
mv -f "$tmp" "$file"
trap - EXIT
"""


# -- validation -------------------------------------------------------------------------------


def validate_name(name: str, what: str = "user name") -> str:
    """A Linux user or group name: ``^[a-z_][a-z0-9_-]{0,31}$``, rejected, never truncated."""
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise ValidationError(
            f"invalid {what} for a Linux target",
            hint="1-32 characters: a-z, 0-9, '_' or '-', not starting with a digit or '-'",
        )
    return name


def _password_line(username: str, secret: Sensitive[str]) -> Sensitive[str]:
    """``user:password\\n`` for chpasswd's stdin (a password cannot hold a line break)."""
    value = secret.reveal()
    if not value or any(c in value for c in "\n\r\x00"):
        raise ValidationError(
            "the password cannot be set with chpasswd",
            hint="not empty, no line break and no NUL character",
        )
    return Sensitive(f"{username}:{value}\n")


def _key_line(secret: Sensitive[str]) -> str:
    algorithm, blob = public_key_blob(secret)
    return f"{algorithm} {blob} {KEY_MARK}"


def expiry_date(expires_at: datetime) -> str:
    """Linux expires an account at the start of its expiry day (UTC): the day after the
    grant's end, so the account is valid until then; the core drops it at ``expires_at``."""
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    return (expires_at.astimezone(UTC).date() + timedelta(days=1)).isoformat()


@dataclass(frozen=True)
class Elevation:
    """A parsed elevation role: a group to join, or a sudoers rule to hold."""

    group: str | None = None
    sudo_rule: str | None = None

    def sudoers_line(self, username: str) -> str:
        assert self.sudo_rule is not None
        return f"{username} {self.sudo_rule}"


def parse_role(role: str) -> Elevation:
    """``group:NAME`` / ``NAME`` / ``sudo`` / ``sudo:RULE`` (see the module docstring)."""
    if not isinstance(role, str):
        raise ValidationError("invalid elevation role")
    if role == "sudo":
        return Elevation(sudo_rule=FULL_SUDO_RULE)
    if role.startswith("sudo:"):
        rule = role.removeprefix("sudo:").strip()
        if SUDO_RULE_RE.fullmatch(rule) is None or "=" not in rule or rule.endswith("\\"):
            raise ValidationError(
                "invalid sudo rule in the elevation role",
                hint="sudo:HOSTS=(RUNAS) [NOPASSWD:] COMMANDS, e.g. "
                "sudo:ALL=(root) NOPASSWD: /usr/bin/systemctl restart nginx",
            )
        return Elevation(sudo_rule=rule)
    return Elevation(group=validate_name(role.removeprefix("group:"), "group name"))


# -- running commands as the target's administrator ---------------------------------------------


class _Admin:
    """One admin connection; :meth:`run` runs one command and checks its exit status."""

    def __init__(self, target: TargetAccess, conn: asyncssh.SSHClientConnection) -> None:
        self.target = target
        self.conn = conn
        # a non-root admin needs password-less sudo (-n: fail rather than prompt)
        self.prefix = [] if target.admin_user == "root" else ["sudo", "-n", "--"]

    async def run(
        self,
        op: str,
        argv: list[str],
        stdin: Sensitive[str] | str | None = None,
        ok: tuple[int, ...] = (0,),
        as_user: str | None = None,
    ) -> int:
        if as_user is not None:
            argv = ["runuser", "-u", as_user, "--", *argv]
        command = shlex.join([*self.prefix, *argv])
        data = stdin.reveal() if isinstance(stdin, Sensitive) else stdin
        status: int | None
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_SECONDS):
                result = await self.conn.run(command, input=data, check=False)
            status = result.exit_status
        except (asyncssh.Error, OSError, TimeoutError):
            status = None
        if status is None:
            raise _rejected(self.target, op, "the command did not finish", retryable=True)
        if status not in ok:
            raise _rejected(self.target, op, f"exit status {status}", status=status)
        return status

    async def script(
        self,
        op: str,
        script: str,
        *args: str,
        stdin: Sensitive[str] | str | None = None,
        ok: tuple[int, ...] = (0,),
        as_user: str | None = None,
    ) -> int:
        return await self.run(op, ["sh", "-c", script, "sh", *args], stdin, ok, as_user)


def _rejected(
    target: TargetAccess, op: str, what: str, status: int | None = None, retryable: bool = False
) -> TargetRejected:
    hint = _EXIT_HINTS.get(status or -1, "the target's own logs say more")
    return TargetRejected(
        f"ssh target {target.name!r}: {op} failed ({what})", hint=hint, retryable=retryable
    )


@asynccontextmanager
async def _admin(target: TargetAccess) -> AsyncIterator[_Admin]:
    if not target.admin_user or target.admin_secret is None:
        raise TargetRejected(
            f"ssh target {target.name!r} has no administrator credential",
            hint="register it with --admin-user and --admin-key-file (or --admin-password-stdin)",
        )
    conn = await connect(target, target.admin_user, target.admin_secret)
    try:
        yield _Admin(target, conn)
    finally:
        conn.close()
        await conn.wait_closed()


async def _set_authorized_key(
    admin: _Admin,
    op: str,
    username: str,
    new: Sensitive[str],
    current: Sensitive[str] | None,
) -> None:
    old_blob = public_key_blob(current)[1] if current and is_private_key(current) else ""
    await admin.script(
        op,
        _SET_AUTHORIZED_KEY,
        KEY_MARK,
        old_blob,
        stdin=_key_line(new) + "\n",
        as_user=username,
    )


# -- operations ---------------------------------------------------------------------------------


async def verify(target: TargetAccess, username: str, secret: Sensitive[str]) -> bool:
    """A fresh login as ``username`` with ``secret``: True, False if the target refuses it."""
    validate_name(username)
    try:
        conn = await connect(target, username, secret)
    except LoginRefused:
        return False
    conn.close()
    await conn.wait_closed()
    return True


async def rotate(
    target: TargetAccess,
    username: str,
    new: Sensitive[str],
    current: Sensitive[str] | None = None,
) -> None:
    """Set ``new`` on ``username``: ``chpasswd`` for a password; for a private key, its public
    line replaces jitvault's line (and ``current``'s) in ``~/.ssh/authorized_keys``."""
    validate_name(username)
    line = None if is_private_key(new) else _password_line(username, new)
    async with _admin(target) as admin:
        if line is None:
            await _set_authorized_key(admin, "rotate", username, new, current)
        else:
            await admin.run("rotate", ["chpasswd"], stdin=line)


async def create_account(
    target: TargetAccess,
    template: AccountTemplate,
    username: str,
    secret: Sensitive[str],
    expires_at: datetime,
) -> None:
    """``useradd`` (or, for a user jitvault made, ``usermod``) with the template's groups
    (``grant_roles``), an expiry date and jitvault's mark; then the secret: ``chpasswd`` for a
    password, ``authorized_keys`` for a private key. Safe to re-run after a crash."""
    validate_name(username)
    groups = [validate_name(g, "template group") for g in template.grant_roles]
    shell = str(template.extra.get("shell", DEFAULT_SHELL))
    if SHELL_RE.fullmatch(shell) is None or ".." in shell:
        raise ValidationError("invalid shell in the account template", hint="an absolute path")
    key = is_private_key(secret)
    line = None if key else _password_line(username, secret)
    args = [username, EPHEMERAL_MARK, expiry_date(expires_at), ",".join(groups), shell]
    async with _admin(target) as admin:
        await admin.script("create_account", _ENSURE_USER, *args, "key" if key else "password")
        crash_point("ssh.create_account.after_user")
        if line is None:
            await _set_authorized_key(admin, "create_account", username, secret, None)
        else:
            await admin.run("create_account", ["chpasswd"], stdin=line)
        crash_point("ssh.create_account.after_secret")


async def drop_account(target: TargetAccess, template: AccountTemplate, username: str) -> None:
    """Lock the user (no new login), kill its processes, ``userdel --remove`` it and remove its
    sudoers drop-in; no error if it is gone. Refused for a user jitvault did not create."""
    validate_name(username)
    async with _admin(target) as admin:
        await admin.script("drop_account", _LOCK_USER, username, EPHEMERAL_MARK)
        crash_point("ssh.drop_account.after_lock")
        # pkill: 0 killed some, 1 none left; 2 the user is already gone
        await admin.run("drop_account", ["pkill", "-KILL", "-u", username], ok=(0, 1, 2))
        crash_point("ssh.drop_account.after_kill")
        await admin.script(
            "drop_account", _REMOVE_USER, username, EPHEMERAL_MARK, str(DROP_ATTEMPTS)
        )


async def elevate(target: TargetAccess, username: str, role: str, expires_at: datetime) -> None:
    """Give ``username`` the group or sudoers rule of ``role`` (idempotent). Neither expires by
    itself on the target: the core revokes at ``expires_at``."""
    await _change_role(target, username, role, give=True)


async def revoke(target: TargetAccess, username: str, role: str) -> None:
    """Take back what :func:`elevate` gave; no error if it is already gone."""
    await _change_role(target, username, role, give=False)


async def has_role(target: TargetAccess, username: str, role: str) -> bool:
    """Does ``username`` hold ``role`` now: a member of the group (``id -nG``), or jitvault's
    sudoers drop-in holds the rule's line? False if the user or the group is gone. Read only."""
    validate_name(username)
    elevation = parse_role(role)
    async with _admin(target) as admin:
        if elevation.group is not None:
            status = await admin.script("has_role", _IN_GROUP, username, elevation.group, ok=(0, 1))
        else:
            line = elevation.sudoers_line(username) + "\n"
            status = await admin.script(
                "has_role", _HAS_SUDOERS_RULE, username, stdin=line, ok=(0, 1)
            )
    return status == 0


async def _change_role(target: TargetAccess, username: str, role: str, give: bool) -> None:
    validate_name(username)
    elevation = parse_role(role)
    op = "elevate" if give else "revoke"
    async with _admin(target) as admin:
        if elevation.group is not None:
            script = _ADD_TO_GROUP if give else _REMOVE_FROM_GROUP
            await admin.script(op, script, username, elevation.group)
        else:
            line = elevation.sudoers_line(username) + "\n"
            mode = "add" if give else "remove"
            await admin.script(op, _SUDOERS_RULE, mode, username, stdin=line)


__all__ = [
    "EPHEMERAL_MARK",
    "KEY_MARK",
    "Elevation",
    "create_account",
    "drop_account",
    "elevate",
    "expiry_date",
    "has_role",
    "parse_role",
    "revoke",
    "rotate",
    "validate_name",
    "verify",
]

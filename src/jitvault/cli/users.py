"""jitvault user / token / whoami / login."""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import quote

import typer

from jitvault.cli.client import EXIT_INVALID, ApiClient, fail, read_secret_stdin
from jitvault.cli.output import JsonOpt, line, note, show
from jitvault.crypto import parse_public_key
from jitvault.errors import ValidationError

user_app = typer.Typer(help="Manage users (admin) and SSH keys (yours).", no_args_is_help=True)
token_app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)
key_app = typer.Typer(
    help="Register the SSH public keys you log in to the SSH proxy with (with a live grant).",
    no_args_is_help=True,
)
user_app.add_typer(key_app, name="key")

USER_COLUMNS = ("name", "role", "groups", "disabled", "created_at")
KEY_COLUMNS = ("fingerprint", "algorithm", "comment", "created_at")
#: far above any public key file
_MAX_KEY_FILE_BYTES = 65_536
UserOpt = typer.Option(None, "--user", "-u", help="Whose keys (default: yours; others: admin).")


@user_app.command("add")
def user_add(
    name: str,
    role: str = typer.Option(..., "--role", help="requester, approver, admin or auditor"),
    group: list[str] = typer.Option([], "--group", help="Group membership (repeatable)."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read a login password from standard input."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Create a user."""
    body: dict[str, object] = {"name": name, "role": role, "groups": group}
    if password_stdin:
        body["password"] = read_secret_stdin("password")
    show(ApiClient().request("POST", "/v1/users", json=body), as_json)


@user_app.command("list")
def user_list(as_json: bool = JsonOpt) -> None:
    """List users."""
    show(ApiClient().request("GET", "/v1/users"), as_json, USER_COLUMNS)


@user_app.command("show")
def user_show(name: str, as_json: bool = JsonOpt) -> None:
    """Show one user."""
    show(ApiClient().request("GET", f"/v1/users/{name}"), as_json)


@user_app.command(
    "disable",
    short_help="Disable a user now, taking all their access away.",
    help=(
        "Disable a user now, taking all their access away, in one step: no more logins (API "
        "tokens, password, SSH keys), every live grant of theirs revoked (sessions cut, "
        "cleanups queued), every pending request cancelled."
    ),
)
def user_disable(name: str, as_json: bool = JsonOpt) -> None:
    show(ApiClient().request("POST", f"/v1/users/{quote(name, safe='')}/disable"), as_json)


@user_app.command("enable")
def user_enable(name: str, as_json: bool = JsonOpt) -> None:
    """Let a disabled user log in again (revoked grants stay revoked)."""
    show(ApiClient().request("POST", f"/v1/users/{quote(name, safe='')}/enable"), as_json)


def _user_or_me(api: ApiClient, user: str | None) -> str:
    if user:
        return user
    me: str = api.request("GET", "/v1/auth/whoami")["name"]
    return me


def _read_key_file(source: str) -> str:
    if source == "-":
        return sys.stdin.read(_MAX_KEY_FILE_BYTES)
    path = Path(source).expanduser()
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_KEY_FILE_BYTES)
    except OSError as exc:
        fail(f"cannot read {source}: {exc.strerror}", EXIT_INVALID)
    return data.decode("utf-8", errors="replace")


@key_app.command("add")
def key_add(
    source: str = typer.Argument(
        ..., metavar="FILE", help="The public key file (~/.ssh/id_ed25519.pub), or - for stdin."
    ),
    user: str | None = UserOpt,
    comment: str | None = typer.Option(
        None, "--comment", "-c", help="A name for the key (default: the key line's comment)."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Register an SSH public key: with a live grant of yours, it logs you in to the SSH proxy
    (ssh -i KEY -p PORT ACCOUNT.GRANT@proxy). Ed25519, ECDSA or RSA of 2048 bits or more."""
    text = _read_key_file(source)
    try:
        # checked here first, so that a private key given by mistake never leaves this machine
        parse_public_key(text, comment)
    except ValidationError as exc:
        hint = exc.hint
        if source != "-" and not source.endswith(".pub") and Path(source + ".pub").exists():
            hint = f"did you mean {source}.pub?"
        fail(f"{exc.message} ({hint})" if hint else exc.message, EXIT_INVALID)
    api = ApiClient()
    name = _user_or_me(api, user)
    body = {"public_key": text, "comment": comment}
    added = api.request("POST", f"/v1/users/{quote(name, safe='')}/ssh-keys", json=body)
    show(added, as_json)


@key_app.command("list")
def key_list(user: str | None = UserOpt, as_json: bool = JsonOpt) -> None:
    """List registered SSH keys, one a line: fingerprint (as 'ssh-keygen -l' prints it),
    type, comment, when it was added."""
    api = ApiClient()
    name = _user_or_me(api, user)
    keys = api.request("GET", f"/v1/users/{quote(name, safe='')}/ssh-keys")
    if as_json:
        show(keys, True)
        return
    if not keys:
        note("(none)")
    for k in keys:  # whole lines, not a table: a fingerprint must copy in one piece
        line("  ".join(str(k[c] or "-") for c in KEY_COLUMNS))


@key_app.command("remove")
def key_remove(
    fingerprint: str = typer.Argument(..., help="SHA256:... as 'jitvault user key list' shows."),
    user: str | None = UserOpt,
) -> None:
    """Remove a registered SSH key: it logs in no more, and its open sessions are cut."""
    api = ApiClient()
    name = _user_or_me(api, user)
    api.request(
        "DELETE", f"/v1/users/{quote(name, safe='')}/ssh-keys/{quote(fingerprint, safe='')}"
    )
    note(f"removed {fingerprint}")


@token_app.command("create")
def token_create(
    name: str,
    description: str = typer.Option("", "--description", "-d"),
    ttl: str | None = typer.Option(None, "--ttl", help="e.g. 12h, 30d (default: no expiry)"),
    as_json: bool = JsonOpt,
) -> None:
    """Create an API token for NAME. It is printed once."""
    data = ApiClient().request(
        "POST", f"/v1/users/{name}/tokens", json={"description": description, "ttl": ttl}
    )
    if as_json:
        show(data, True)
    else:
        typer.echo(data["token"])
        note("shown once: store it now")


@token_app.command("list")
def token_list(name: str, as_json: bool = JsonOpt) -> None:
    """List a user's tokens (ids and dates, never the tokens)."""
    rows = ApiClient().request("GET", f"/v1/users/{name}/tokens")
    show(rows, as_json, ("id", "description", "created_at", "expires_at", "revoked"))


@token_app.command("revoke")
def token_revoke(token_id: str) -> None:
    """Revoke a token by its id."""
    ApiClient().request("DELETE", f"/v1/tokens/{token_id}")
    note(f"revoked {token_id}")


def whoami(as_json: bool = JsonOpt) -> None:
    """Show who the current token belongs to."""
    show(ApiClient().request("GET", "/v1/auth/whoami"), as_json)


def login(
    username: str,
    password_stdin: bool = typer.Option(
        True, "--password-stdin/--prompt", help="Read the password from standard input."
    ),
) -> None:
    """Log in with a password; prints an export line with a 12-hour token."""
    password = read_secret_stdin("password")
    data = ApiClient(token="").request(
        "POST", "/v1/auth/login", json={"username": username, "password": password}, auth=False
    )
    typer.echo(f"export JITVAULT_TOKEN={data['token']}")


__all__ = ["key_app", "login", "token_app", "user_app", "whoami"]

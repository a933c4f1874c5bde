"""jitvault user / token / whoami / login."""

from __future__ import annotations

import typer

from jitvault.cli.client import ApiClient, read_secret_stdin
from jitvault.cli.output import JsonOpt, err_console, show

user_app = typer.Typer(help="Manage users (admin).", no_args_is_help=True)
token_app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)

USER_COLUMNS = ("name", "role", "groups", "disabled", "created_at")


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
        err_console.print("shown once: store it now")


@token_app.command("list")
def token_list(name: str, as_json: bool = JsonOpt) -> None:
    """List a user's tokens (ids and dates, never the tokens)."""
    rows = ApiClient().request("GET", f"/v1/users/{name}/tokens")
    show(rows, as_json, ("id", "description", "created_at", "expires_at", "revoked"))


@token_app.command("revoke")
def token_revoke(token_id: str) -> None:
    """Revoke a token by its id."""
    ApiClient().request("DELETE", f"/v1/tokens/{token_id}")
    err_console.print(f"revoked {token_id}")


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


__all__ = ["login", "token_app", "user_app", "whoami"]

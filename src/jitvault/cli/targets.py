"""jitvault target / account. Secrets go in on standard input and never come back."""

from __future__ import annotations

from pathlib import Path

import typer

from jitvault.cli.client import EXIT_INVALID, ApiClient, fail, read_secret_stdin
from jitvault.cli.output import JsonOpt, line, show

target_app = typer.Typer(
    help="Manage targets (systems access is brokered to).", no_args_is_help=True
)
account_app = typer.Typer(help="Manage privileged accounts on targets.", no_args_is_help=True)

TARGET_COLUMNS = ("name", "kind", "options", "admin_user", "has_admin_secret")
ACCOUNT_COLUMNS = ("target", "username", "mode", "status", "has_secret", "secret_updated_at")


def _split(ref: str, username: str | None) -> tuple[str, str]:
    if username is not None:
        return ref, username
    target, sep, user = ref.partition("/")
    if not sep or not target or not user:
        fail(f"expected TARGET/USERNAME, got {ref!r}", EXIT_INVALID)
    return target, user


def _key_file(path: Path) -> str:
    """The private key in ``path`` (a file, not an argument: arguments show in ``ps``)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read the key file {str(path)!r}: {type(exc).__name__}", EXIT_INVALID)
    if "PRIVATE KEY-----" not in text:
        fail(f"{str(path)!r} holds no private key", EXIT_INVALID)
    return text


def _secret_body(
    password_stdin: bool, key_file: Path | None, password_field: str, key_field: str
) -> dict[str, object]:
    if password_stdin and key_file is not None:
        fail("give --password-stdin or --key-file, not both", EXIT_INVALID)
    if key_file is not None:
        return {key_field: _key_file(key_file)}
    if password_stdin:
        return {password_field: read_secret_stdin("password")}
    return {}


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"{flag} expects KEY=VALUE, got {item!r}", EXIT_INVALID)
        out[key] = value
    return out


@target_app.command("add")
def target_add(
    kind: str = typer.Argument(..., help="Target kind: postgres or ssh"),
    name: str = typer.Argument(...),
    host: str = typer.Option(..., "--host"),
    port: int | None = typer.Option(None, "--port"),
    dbname: str | None = typer.Option(None, "--dbname"),
    option: list[str] = typer.Option([], "--option", "-o", help="Extra option KEY=VALUE."),
    label: list[str] = typer.Option([], "--label", "-l", help="Label KEY=VALUE for policies."),
    admin_user: str | None = typer.Option(None, "--admin-user"),
    admin_password_stdin: bool = typer.Option(
        False, "--admin-password-stdin", help="Read the admin password from standard input."
    ),
    admin_key_file: Path | None = typer.Option(
        None, "--admin-key-file", help="Read the admin's private key (SSH) from this file."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Register a target; its admin credential goes into the vault.

    An ssh target's host key is read from the host now and pinned (or give it with
    --option host_key=...): a host that later presents another key is refused.
    """
    options: dict[str, object] = {"host": host}
    if port is not None:
        options["port"] = port
    if dbname is not None:
        options["dbname"] = dbname
    options.update(_pairs(option, "--option"))
    body: dict[str, object] = {
        "name": name,
        "kind": kind,
        "options": options,
        "admin_user": admin_user,
        "labels": _pairs(label, "--label"),
    }
    body.update(
        _secret_body(admin_password_stdin, admin_key_file, "admin_password", "admin_private_key")
    )
    show(ApiClient().request("POST", "/v1/targets", json=body), as_json)


@target_app.command("update")
def target_update(
    name: str = typer.Argument(...),
    host: str | None = typer.Option(None, "--host"),
    port: int | None = typer.Option(None, "--port"),
    dbname: str | None = typer.Option(None, "--dbname"),
    option: list[str] = typer.Option(
        [], "--option", "-o", help="Option KEY=VALUE to set; KEY= removes it."
    ),
    label: list[str] = typer.Option(
        [], "--label", "-l", help="Label KEY=VALUE; the labels given replace all the old ones."
    ),
    admin_user: str | None = typer.Option(None, "--admin-user"),
    admin_password_stdin: bool = typer.Option(
        False, "--admin-password-stdin", help="Read a new admin password from standard input."
    ),
    admin_key_file: Path | None = typer.Option(
        None, "--admin-key-file", help="Read a new admin private key (SSH) from this file."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Change a target: where it is, its options, labels or admin credential.

    An ssh target re-keyed on purpose: '--option host_key=' reads and pins the key the host
    presents now (compare the host_key printed with the host's own public key file), and
    '--option host_key="ssh-ed25519 AAAA..."' pins the key given. Open sessions are not touched.
    """
    options: dict[str, object] = {}
    for key, value in (("host", host), ("port", port), ("dbname", dbname)):
        if value is not None:
            options[key] = value
    options.update(_pairs(option, "--option"))
    body: dict[str, object] = {"options": options, "admin_user": admin_user}
    if label:
        body["labels"] = _pairs(label, "--label")
    body.update(
        _secret_body(admin_password_stdin, admin_key_file, "admin_password", "admin_private_key")
    )
    if not options and len(body) == 2 and admin_user is None:
        fail("nothing to change: give --host, --port, --option, --label or an admin credential",
             EXIT_INVALID)  # fmt: skip
    show(ApiClient().request("PATCH", f"/v1/targets/{name}", json=body), as_json)


@target_app.command("list")
def target_list(as_json: bool = JsonOpt) -> None:
    """List targets."""
    show(ApiClient().request("GET", "/v1/targets"), as_json, TARGET_COLUMNS)


@target_app.command("show")
def target_show(name: str, as_json: bool = JsonOpt) -> None:
    """Show one target (never its secret)."""
    show(ApiClient().request("GET", f"/v1/targets/{name}"), as_json)


@account_app.command("add")
def account_add(
    target: str,
    username: str,
    mode: str = typer.Option("injected", "--mode", help="injected, ephemeral or elevation"),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the account's current password from stdin."
    ),
    key_file: Path | None = typer.Option(
        None, "--key-file", help="Read the account's private key (SSH) from this file."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Register an account; its credential goes into the vault."""
    body: dict[str, object] = {"username": username, "mode": mode}
    body.update(_secret_body(password_stdin, key_file, "password", "private_key"))
    show(ApiClient().request("POST", f"/v1/targets/{target}/accounts", json=body), as_json)


@account_app.command("list")
def account_list(
    target: str | None = typer.Option(None, "--target", "-t"), as_json: bool = JsonOpt
) -> None:
    """List accounts (never their secrets)."""
    path = f"/v1/targets/{target}/accounts" if target else "/v1/accounts"
    show(ApiClient().request("GET", path), as_json, ACCOUNT_COLUMNS)


@account_app.command("show")
def account_show(
    ref: str = typer.Argument(..., help="TARGET/USERNAME (or TARGET USERNAME)"),
    username: str | None = typer.Argument(None),
    as_json: bool = JsonOpt,
) -> None:
    """Show one account (never its secret)."""
    target, user = _split(ref, username)
    show(ApiClient().request("GET", f"/v1/targets/{target}/accounts/{user}"), as_json)


@account_app.command("set-secret")
def account_set_secret(
    ref: str = typer.Argument(..., help="TARGET/USERNAME"),
    key_file: Path | None = typer.Option(
        None, "--key-file", help="A private key (SSH) from this file instead of a password."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Replace the vaulted credential (a password from standard input, or --key-file)."""
    target, user = _split(ref, None)
    body = _secret_body(key_file is None, key_file, "password", "private_key")
    show(
        ApiClient().request("PUT", f"/v1/targets/{target}/accounts/{user}/secret", json=body),
        as_json,
    )


@account_app.command("verify")
def account_verify(
    ref: str = typer.Argument(..., help="TARGET/USERNAME"),
    as_json: bool = JsonOpt,
) -> None:
    """Check that the vaulted credential still logs in (exit 1 if it does not)."""
    target, user = _split(ref, None)
    data = ApiClient().request("POST", f"/v1/targets/{target}/accounts/{user}/verify")
    if as_json:
        show(data, True)
    else:
        line(f"{data['account']}: {'ok' if data['ok'] else 'FAILED: does not log in'}")
    if not data["ok"]:
        raise typer.Exit(1)


def rotate(
    ref: str = typer.Argument(..., help="TARGET/USERNAME"),
    as_json: bool = JsonOpt,
) -> None:
    """Rotate a shared account's credential now (journaled, verified, crash-safe)."""
    target, user = _split(ref, None)
    data = ApiClient().request("POST", f"/v1/targets/{target}/accounts/{user}/rotate")
    if as_json:
        show(data, True)
    elif data["rotated"]:
        line(f"{data['account']}: rotated")
    else:
        fail(f"{data['account']}: not rotated ({data['reconciled']})")


__all__ = ["account_app", "rotate", "target_app"]

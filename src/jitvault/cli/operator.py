"""jitvault operator: seal status, init, unseal, key rotation."""

from __future__ import annotations

import time

import typer
from rich.progress import Progress

from jitvault.cli import local
from jitvault.cli.client import ApiClient, read_secret_stdin
from jitvault.cli.output import JsonOpt, err_console, note, show

operator_app = typer.Typer(help="Operate the vault: seal, unseal, keys.", no_args_is_help=True)

operator_app.command("reencrypt")(local.reencrypt)


@operator_app.command("seal-status")
def seal_status(as_json: bool = JsonOpt) -> None:
    """Show whether the vault is initialized and sealed, and the key terms."""
    show(ApiClient().request("GET", "/v1/sys/seal-status", auth=False), as_json)


@operator_app.command("init")
def operator_init(
    shares: int | None = typer.Option(None, "--shares", help="Shamir shares (shamir provider)."),
    threshold: int | None = typer.Option(None, "--threshold", help="Shares needed to unseal."),
    admin: str = typer.Option("admin", "--admin"),
    as_json: bool = JsonOpt,
) -> None:
    """Initialize an empty server: prints the unseal shares and an admin token, once."""
    data = ApiClient().request(
        "POST",
        "/v1/sys/init",
        auth=False,
        json={"admin": admin, "shares": shares, "threshold": threshold},
    )
    if as_json:
        show(data, True)
        return
    for i, share in enumerate(data["shares"], 1):
        typer.echo(f"unseal share {i}: {share}")
    typer.echo(f"export JITVAULT_TOKEN={data['admin_token']}")
    note("shown once: give each share to a different person, store the token")


@operator_app.command("unseal")
def unseal(as_json: bool = JsonOpt) -> None:
    """Submit one unseal share, read from standard input (or a hidden prompt)."""
    share = read_secret_stdin("unseal share")
    data = ApiClient().request("POST", "/v1/sys/unseal", auth=False, json={"share": share})
    if as_json:
        show(data, True)
    elif data["sealed"]:
        typer.echo(f"sealed: {data['progress']}/{data['threshold']} shares given")
    else:
        typer.echo("unsealed")


@operator_app.command("rotate-key")
def rotate_key(
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow re-encryption to the end."),
    timeout: float = typer.Option(3600, "--timeout", help="Seconds to follow progress."),
    as_json: bool = JsonOpt,
) -> None:
    """Start a new key term; every stored secret is re-encrypted in the background."""
    client = ApiClient()
    status = client.request("POST", "/v1/sys/rotate-key")
    if wait and not status["done"]:
        total = max(status["remaining"], 1)
        deadline = time.monotonic() + timeout
        with Progress(console=err_console) as progress:
            task = progress.add_task(
                f"re-encrypting under term {status['active_term']}", total=total
            )
            while not status["done"] and time.monotonic() < deadline:
                time.sleep(0.5)
                status = client.request("GET", "/v1/sys/rekey-status")
                total = max(total, status["remaining"])
                progress.update(task, completed=total - status["remaining"], total=total)
    show(status, as_json)


@operator_app.command("rekey-status")
def rekey_status(as_json: bool = JsonOpt) -> None:
    """Show the key terms and how many values still wait for re-encryption."""
    show(ApiClient().request("GET", "/v1/sys/rekey-status"), as_json)


__all__ = ["operator_app"]

"""The ``jitvault`` command. Remote commands talk to the API (JITVAULT_ADDR, JITVAULT_TOKEN);
``init``, ``server``, ``dev`` and ``operator reencrypt`` work on the local data directory."""

from __future__ import annotations

import os
import sys

import typer

from jitvault import __version__
from jitvault.cli import local
from jitvault.cli.audit import audit_app
from jitvault.cli.client import CliError
from jitvault.cli.operator import operator_app
from jitvault.cli.output import err_console
from jitvault.cli.targets import account_app, target_app
from jitvault.cli.users import login, token_app, user_app, whoami
from jitvault.errors import JitvaultError

app = typer.Typer(
    name="jitvault",
    help="Just-in-time privileged access: vault, approvals, session proxies, rotation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.command()(local.dev)
app.command()(local.init)
app.command()(local.server)
app.command()(whoami)
app.command()(login)
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")
app.add_typer(target_app, name="target")
app.add_typer(account_app, name="account")
app.add_typer(operator_app, name="operator")
app.add_typer(audit_app, name="audit")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    # files we create (database, config, keys, exports) are for the owner only
    os.umask(0o077)
    try:
        app()
    except CliError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(exc.exit_code)
    except JitvaultError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(1)


__all__ = ["app", "main"]

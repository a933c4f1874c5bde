"""The ``jitvault`` command. Remote commands talk to the API (JITVAULT_ADDR, JITVAULT_TOKEN);
``init``, ``server``, ``dev`` and ``operator reencrypt`` work on the local data directory."""

from __future__ import annotations

import os
import sys

import typer

from jitvault import __version__
from jitvault.cli import client, local
from jitvault.cli.audit import audit_app
from jitvault.cli.client import CliError
from jitvault.cli.operator import operator_app
from jitvault.cli.output import note
from jitvault.cli.sessions import session_app
from jitvault.cli.targets import account_app, rotate, target_app
from jitvault.cli.templates import template_app
from jitvault.cli.users import login, token_app, user_app, whoami
from jitvault.cli.workflow import connect, grant_app, policy_app, request_app
from jitvault.errors import JitvaultError

_EXIT_BY_CODE = {
    "config": client.EXIT_INVALID,
    "invalid": client.EXIT_INVALID,
    "not_found": client.EXIT_NOT_FOUND,
    "conflict": client.EXIT_CONFLICT,
    "unauthenticated": client.EXIT_UNAUTHENTICATED,
    "locked_out": client.EXIT_UNAUTHENTICATED,
    "forbidden": client.EXIT_FORBIDDEN,
    "unavailable": client.EXIT_UNAVAILABLE,
    "sealed": client.EXIT_UNAVAILABLE,
    "audit_unavailable": client.EXIT_UNAVAILABLE,
}

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
app.command()(rotate)
app.command()(connect)
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")
app.add_typer(target_app, name="target")
app.add_typer(account_app, name="account")
app.add_typer(template_app, name="template")
app.add_typer(request_app, name="request")
app.add_typer(grant_app, name="grant")
app.add_typer(policy_app, name="policy")
app.add_typer(session_app, name="session")
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
        note(f"error: {exc}")
        sys.exit(exc.exit_code)
    except JitvaultError as exc:
        # local commands (init, dev, server, reencrypt) raise these: same exit codes as the API
        note(f"error: {exc}")
        sys.exit(_EXIT_BY_CODE.get(exc.code, client.EXIT_ERROR))


__all__ = ["app", "main"]

"""jitvault template: how ephemeral accounts are made (admins)."""

from __future__ import annotations

import typer

from jitvault.cli.client import EXIT_INVALID, ApiClient, fail
from jitvault.cli.output import JsonOpt, show

template_app = typer.Typer(
    help="Account templates: ephemeral accounts made per grant and dropped at its end.",
    no_args_is_help=True,
)

TEMPLATE_COLUMNS = ("target", "name", "mode", "grant_roles", "on_drop", "reassign_to")


def _names(*lists: str | None) -> list[str]:
    return [n.strip() for given in lists if given for n in given.split(",") if n.strip()]


@template_app.command("add")
def template_add(
    target: str = typer.Argument(..., help="Target name."),
    name: str = typer.Argument(..., help="Template name (lower-case letters, digits, '_')."),
    mode: str = typer.Option("ephemeral", "--mode", help="ephemeral (the only mode so far)."),
    grant_roles: str | None = typer.Option(
        None, "--grant-roles", help="Roles the account gets, comma-separated (PostgreSQL)."
    ),
    groups: str | None = typer.Option(
        None, "--groups", help="Same as --grant-roles, in SSH's words: Linux groups."
    ),
    on_drop: str = typer.Option(
        "drop_owned",
        "--on-drop",
        help="What happens to what the account created: drop_owned or reassign_owned.",
    ),
    reassign_to: str | None = typer.Option(
        None, "--reassign-to", help="With --on-drop reassign_owned: the role that takes it."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Add a template; `request create --ephemeral NAME` then gets an account made from it
    (named jv_<template>_<grant id>), dropped when the grant ends."""
    if grant_roles and groups:
        fail("give --grant-roles or --groups, not both (they are the same field)", EXIT_INVALID)
    body = {
        "name": name,
        "mode": mode,
        "grant_roles": _names(grant_roles, groups),
        "on_drop": on_drop,
        "reassign_to": reassign_to,
    }
    show(ApiClient().request("POST", f"/v1/targets/{target}/templates", json=body), as_json)


@template_app.command("list")
def template_list(
    target: str | None = typer.Argument(None, help="Only this target's templates."),
    as_json: bool = JsonOpt,
) -> None:
    """List templates."""
    path = f"/v1/targets/{target}/templates" if target else "/v1/templates"
    show(ApiClient().request("GET", path), as_json, TEMPLATE_COLUMNS)


@template_app.command("show")
def template_show(target: str, name: str, as_json: bool = JsonOpt) -> None:
    """Show one template."""
    show(ApiClient().request("GET", f"/v1/targets/{target}/templates/{name}"), as_json)


@template_app.command("remove")
def template_remove(target: str, name: str, as_json: bool = JsonOpt) -> None:
    """Remove a template (grants made from it keep their own copy until they end)."""
    show(ApiClient().request("DELETE", f"/v1/targets/{target}/templates/{name}"), as_json)

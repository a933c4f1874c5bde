"""jitvault session: proxy sessions and what they did."""

from __future__ import annotations

import typer

from jitvault.cli.client import ApiClient
from jitvault.cli.output import JsonOpt, show

session_app = typer.Typer(help="Proxy sessions and their recordings.", no_args_is_help=True)

COLUMNS = ("id", "user", "target", "account", "protocol", "started_at", "ended_at", "end_reason")


@session_app.command("list")
def list_(
    live: bool = typer.Option(False, "--live", help="Only sessions still open."),
    as_json: bool = JsonOpt,
) -> None:
    """Your sessions (admins and auditors: everyone's)."""
    show(ApiClient().request("GET", "/v1/sessions", params={"live": live}), as_json, COLUMNS)


@session_app.command("show")
def show_(session_id: int, as_json: bool = JsonOpt) -> None:
    """One session and its recorded events (query texts), in order."""
    data = ApiClient().request("GET", f"/v1/sessions/{session_id}")
    if as_json:
        show(data, True)
        return
    events = data.pop("events")
    show(data, False)
    for e in events:
        typer.echo(f"{e['ts']}  {e['kind']}: {(e['data'] or {}).get('text', e['data'])}")


__all__ = ["session_app"]

"""jitvault audit: list, verify, export."""

from __future__ import annotations

from pathlib import Path

import typer

from jitvault.cli.client import EXIT_ERROR, ApiClient, fail
from jitvault.cli.output import JsonOpt, note, show

audit_app = typer.Typer(help="Read and check the audit log (admin, auditor).", no_args_is_help=True)


@audit_app.command("verify")
def verify(as_json: bool = JsonOpt) -> None:
    """Check the hash chain; names the first bad entry and exits 1 if there is one."""
    result = ApiClient().request("POST", "/v1/audit/verify")
    if as_json:
        show(result, True)
    elif result["ok"]:
        typer.echo(f"ok: {result['checked']} events, chain intact up to {result['head_seq']}")
    if not result["ok"]:
        if not as_json:
            fail(
                f"audit log tampered: first bad event {result['first_bad_seq']}: "
                f"{result['reason']}",
                EXIT_ERROR,
            )
        raise typer.Exit(EXIT_ERROR)


@audit_app.command("list")
def list_events(
    since: str | None = typer.Option(None, "--since", help="e.g. 1h, 7d or an ISO time"),
    limit: int = typer.Option(100, "--limit"),
    as_json: bool = JsonOpt,
) -> None:
    """List audit events."""
    rows = ApiClient().request("GET", "/v1/audit/events", params={"since": since, "limit": limit})
    show(rows, as_json, ("seq", "ts", "actor", "action", "subject", "outcome", "source"))


@audit_app.command("export")
def export(
    fmt: str = typer.Option("jsonl", "--format", help="jsonl"),
    since: str | None = typer.Option(None, "--since"),
    output: Path | None = typer.Option(None, "--output", "-o", help="File (default: stdout)."),
) -> None:
    """Export events as JSON lines, with their chain MACs, for an external store."""
    params = {"format": fmt, **({"since": since} if since else {})}
    lines = ApiClient().stream_lines("/v1/audit/export", params=params)
    if output is None:
        for line in lines:
            typer.echo(line)
        return
    count = 0
    with output.open("w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line + "\n")
            count += 1
    note(f"wrote {count} events to {output}")


__all__ = ["audit_app"]

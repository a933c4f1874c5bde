"""Printing results: rich tables for people, ``--json`` for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()
# soft_wrap: an error stays one line on stderr whatever the terminal width
err_console = Console(stderr=True, soft_wrap=True)

JsonOpt = typer.Option(False, "--json", help="Print JSON for scripts.")


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    if not rows:
        err_console.print("(none)")
        return
    t = Table(title=title)
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*[_cell(row.get(col)) for col in columns])
    console.print(t)


def record(data: dict[str, Any]) -> None:
    width = max(len(k) for k in data) if data else 0
    for key, value in data.items():
        typer.echo(f"{key.ljust(width)}  {_cell(value)}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def show(data: Any, as_json: bool, columns: Sequence[str] | None = None) -> None:
    """Print a record (dict) or a list of records."""
    if as_json:
        emit_json(data)
    elif isinstance(data, list):
        table(data, columns or (list(data[0]) if data else []))
    else:
        record(data)


__all__ = ["JsonOpt", "console", "emit_json", "err_console", "record", "show", "table"]

"""Printing results: rich tables for people, ``--json`` for scripts."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()
# soft_wrap: an error stays one line on stderr whatever the terminal width
err_console = Console(stderr=True, soft_wrap=True)

JsonOpt = typer.Option(False, "--json", help="Print JSON for scripts.")


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def note(text: str) -> None:
    """One message for the person at the terminal, on stderr (an error, a hint, what was
    done): as :func:`printable` shows it, never read as rich markup, since it may quote
    something someone else typed (a name in a server's error, a path)."""
    err_console.print(printable(text), markup=False, highlight=False)


def line(text: str) -> None:
    """One line of a result on stdout, as :func:`printable` shows it: it quotes what the
    server sent (names, a policy's explanation), which the reader's terminal must not obey."""
    typer.echo(printable(text))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    if not rows:
        note("(none)")
        return
    t = Table(title=title)
    for col in columns:
        t.add_column(col)
    for row in rows:  # as Text: a value is never read as rich markup ("[/x]" would raise)
        t.add_row(*[Text(_cell(row.get(col))) for col in columns])
    console.print(t)


def record(data: dict[str, Any]) -> None:
    width = max(len(k) for k in data) if data else 0
    for key, value in data.items():
        typer.echo(f"{key.ljust(width)}  {_cell(value)}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return printable(", ".join(str(v) for v in value)) or "-"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return printable(str(value))


#: what a value may not send to the reader's terminal as it is: C0 and C1 controls but tab and
#: line feed (ESC sequences, CR and backspace move the cursor and rewrite lines) and the
#: bidirectional overrides and isolates (they reorder what is shown)
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """A value someone else typed (a request's reason, a recorded statement: perhaps made to
    deceive whoever reads it) as the CLI prints it: controls escaped (``\\x1b``,
    ``\\u202e``), and each line after the first indented, so that it can neither rewrite what
    the terminal shows nor pass for a line of its own."""
    escaped = _CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
    return escaped.replace("\n", "\n    ")


def show(data: Any, as_json: bool, columns: Sequence[str] | None = None) -> None:
    """Print a record (dict) or a list of records."""
    if as_json:
        emit_json(data)
    elif isinstance(data, list):
        table(data, columns or (list(data[0]) if data else []))
    else:
        record(data)


__all__ = [
    "JsonOpt",
    "console",
    "emit_json",
    "err_console",
    "line",
    "note",
    "printable",
    "record",
    "show",
    "table",
]

"""jitvault session: proxy sessions and what they did."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import typer

from jitvault.cli.client import ApiClient
from jitvault.cli.output import JsonOpt, printable, show

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
    """One session and its recorded events (query texts, with how long each ran where the
    server's answer was recorded), in order. A prepared statement shows its name, and each run
    of it the text it was prepared with. Control characters in recorded texts are shown
    escaped, and a text's later lines indented, so that no text can pass for another event."""
    data = ApiClient().request("GET", f"/v1/sessions/{session_id}")
    if as_json:
        show(data, True)
        return
    events = data.pop("events")
    show(data, False)
    for e in events:
        typer.echo(event_line(e))


#: what a run of a prepared statement shows when the recording has no text for it: the
#: unnamed statement had none (none parsed since the session began or since a simple query
#: dropped it: the server refuses the run); a named one was not prepared by a recorded Parse
#: (an SQL PREPARE names one too)
NO_UNNAMED_STATEMENT = "(no unnamed statement was prepared: the server refuses this run)"
NO_PARSE_RECORDED = "(no Parse of it recorded: an SQL PREPARE made it, or the server refuses it)"


def event_line(e: dict[str, Any]) -> str:
    """One recorded event as ``session show`` prints it: time, kind, the text (escaped by
    :func:`printable`), a prepared statement's name or what a run ran, its duration."""
    event = e["data"] or {}
    took = event.get("duration_ms")
    took_text = f"  ({took:.3f} ms)" if isinstance(took, int | float) else ""
    name = event.get("name") if e["kind"] == "query" else None
    if name is not None and event.get("kind") == "execute":
        text = event.get("text", NO_PARSE_RECORDED if name else NO_UNNAMED_STATEMENT)
        of = f"prepared statement {json.dumps(name)}" if name else "the unnamed statement"
        name_text = f"  [run of {of}]"
    else:
        text = event.get("text", e["data"])
        name_text = f"  [prepared as {json.dumps(name)}]" if name else ""
    return f"{e['ts']}  {e['kind']}: {printable(str(text))}{name_text}{took_text}"


#: a pause longer than this in a recording is shortened to it when playing
MAX_IDLE_SECONDS = 2.0


@session_app.command("play")
def play(
    session_id: int,
    speed: float = typer.Option(1.0, "--speed", min=0.01, help="Playback speed (2 = twice)."),
    channel: int | None = typer.Option(
        None, "--channel", help="Which pty channel (default: the first)."
    ),
    cast: bool = typer.Option(False, "--cast", help="Print the asciicast v2 file instead."),
    as_json: bool = JsonOpt,
) -> None:
    """Replay a session's recorded terminal (an SSH pty session) in this terminal.

    Pauses longer than 2 s are shortened to 2 s. ``--cast`` prints the recording as an
    asciicast v2 file, for asciinema or another player; ``--json`` as one JSON document.
    """
    params = {"channel": channel} if channel is not None else None
    lines = ApiClient().stream_lines(f"/v1/sessions/{session_id}/asciicast", params)
    if as_json:  # the recording as one JSON document: its header and its events
        header, *events = (json.loads(line) for line in lines if line)
        show({"header": header, "events": events}, True)
        return
    if cast:
        for line in lines:
            typer.echo(line)
        return
    at = 0.0
    for n, line in enumerate(lines):
        if n == 0 or not line:
            continue  # the header: its size is the client's, not this terminal's
        t, kind, data = json.loads(line)
        if kind != "o":
            continue
        time.sleep(min(max(0.0, t - at), MAX_IDLE_SECONDS) / speed)
        at = t
        sys.stdout.write(data)
        sys.stdout.flush()


__all__ = ["session_app"]

"""What the CLI prints on stderr and in result lines on stdout: text that may quote someone
else's."""

from __future__ import annotations

import pytest

from jitvault.cli import main as cli_main
from jitvault.cli.client import CliError
from jitvault.errors import ValidationError

#: rich markup (a stray closing tag raises, a pair restyles) and terminal controls (an ESC
#: sequence erases the line, CR returns to its start, U+202E reverses what follows)
HOSTILE = "name [/x][b]bold[/b]\x1b[2K\r\u202e\nerror: forged"


@pytest.mark.parametrize("raised", [CliError(HOSTILE, 7), ValidationError(HOSTILE)])
def test_an_error_quoting_hostile_text_is_printed_as_text_on_one_line_of_its_own(
    raised: Exception, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def app() -> None:
        raise raised

    monkeypatch.setattr(cli_main, "app", app)
    with pytest.raises(SystemExit) as exited:
        cli_main.main()
    assert exited.value.code != 0
    err = capsys.readouterr().err
    assert err.startswith("error: name [/x][b]bold[/b]\\x1b[2K\\r\\u202e\n"), err
    assert not any(c in err for c in "\x1b\r\u202e"), err
    # the message's next line cannot pass for an error line of its own
    assert [line for line in err.splitlines() if line.startswith("error:")] == [err.splitlines()[0]]


def test_a_result_line_quoting_server_text_escapes_its_controls(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A line on stdout that quotes the server (here a request's explanation) obeys the same
    rule: its controls are shown escaped, and its next line cannot pass for a line of its own."""
    from jitvault.cli.workflow import _request_line

    _request_line({"id": 7, "state": "denied", "explanation": HOSTILE})
    out = capsys.readouterr().out
    assert out == "request 7: denied: name [/x][b]bold[/b]\\x1b[2K\\r\\u202e\n    error: forged\n"


def test_a_queued_request_says_what_it_waits_for_and_until_when(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from jitvault.cli.workflow import _request_line

    r = {"id": 8, "state": "approved", "explanation": "auto-approved by rule 'q'", "grant_id": 3}
    _request_line({**r, "target": "pg", "name": "app", "queued": False})
    assert capsys.readouterr().out == "request 8: approved (grant 3): auto-approved by rule 'q'\n"
    queued = {"queued": True, "queued_until": "2026-12-02T12:32:59.432909+01:00"}
    _request_line({**r, "target": "pg", "name": "app", **queued})
    assert capsys.readouterr().out == (
        "request 8: approved (grant 3, queued: pg/app is checked out; it starts when checked in,"
        " or lapses at 2026-12-02 11:32 UTC): auto-approved by rule 'q'\n"
    )


def test_session_show_says_what_a_run_without_a_recorded_preparation_is() -> None:
    """A run of the unnamed statement with no text: none was prepared (the server refuses the
    run); a run of a named one with no text: no Parse of it recorded (an SQL PREPARE names
    statements too). A run with its text shows it; a hostile text is escaped, its later lines
    indented so that none passes for an event of its own."""
    from jitvault.cli.sessions import NO_PARSE_RECORDED, NO_UNNAMED_STATEMENT, event_line

    def line(data: dict[str, object]) -> str:
        return event_line({"ts": "T", "kind": "query", "data": data})

    assert line({"kind": "execute", "name": ""}) == (
        f"T  query: {NO_UNNAMED_STATEMENT}  [run of the unnamed statement]"
    )
    assert line({"kind": "execute", "name": "s1"}) == (
        f'T  query: {NO_PARSE_RECORDED}  [run of prepared statement "s1"]'
    )
    ran = line({"kind": "execute", "name": "", "text": "SELECT $1", "duration_ms": 1.5})
    assert ran == "T  query: SELECT $1  [run of the unnamed statement]  (1.500 ms)"
    hostile = line({"kind": "simple", "text": "SELECT 1\x1b[2K\r\nT  query: forged"})
    assert not any(c in hostile for c in "\x1b\r"), hostile
    assert [x for x in hostile.splitlines() if x.startswith("T  ")] == [hostile.splitlines()[0]]

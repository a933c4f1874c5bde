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

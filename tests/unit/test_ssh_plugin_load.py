"""Loading the SSH plugin prints nothing: no process that loads it (the server, the CLI) shows
its users a library's warnings."""

from __future__ import annotations

import subprocess
import sys


def test_loading_the_ssh_plugin_prints_no_warning() -> None:
    # -W default: every warning shown once, DeprecationWarnings included
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", "import jitvault_ssh"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""

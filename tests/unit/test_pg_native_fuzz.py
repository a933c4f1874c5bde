"""The native relay's framing under AddressSanitizer and UndefinedBehaviorSanitizer.

``tests/native/fuzz_framing.c`` is compiled here with gcc (the compiler the install needs
anyway) and run on 20,000 random streams (valid, mutated and random messages, cut at random
points) through both framers: every memory error, leak or undefined behaviour ends it with a
report, and its own checks hold what a relay relies on (forwarded bytes are exactly the next
bytes of the stream, nothing after a violation). Bounded: a fixed count, and a time limit.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests" / "native" / "fuzz_framing.c"
FRAMING = ROOT / "plugins" / "jitvault_postgres"
STREAMS = 20_000


@pytest.mark.parametrize("seed", [1, 20261130])
def test_the_native_framing_survives_random_streams_under_the_sanitizers(
    tmp_path: Path, seed: int
) -> None:
    gcc = shutil.which("gcc")
    assert gcc is not None, "gcc is needed to build the native relay (apt-get install gcc)"
    binary = tmp_path / "fuzz_framing"
    subprocess.run(
        [
            gcc, "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-Wall", "-Wextra", "-Werror", f"-I{FRAMING}", str(HARNESS), "-o", str(binary),
        ],
        check=True,
        timeout=120,
    )  # fmt: skip
    done = subprocess.run(
        [str(binary), str(seed), str(STREAMS)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == f"{STREAMS} streams framed both ways"

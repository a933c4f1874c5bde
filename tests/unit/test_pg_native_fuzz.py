"""The native relay's framing under AddressSanitizer and UndefinedBehaviorSanitizer.

``tests/native/fuzz_framing.c`` is compiled here with gcc (the compiler the install needs
anyway) and run on 20,000 random streams (valid, mutated and random messages, cut at random
points) through both framers: every memory error, leak or undefined behaviour ends it with a
report, and its own checks hold what a relay relies on (forwarded bytes are exactly the next
bytes of the stream, nothing after a violation). Bounded: a fixed count, and a time limit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
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


ENGINE_TESTS = [
    ROOT / "tests" / "unit" / "test_pg_native_engine.py",
    ROOT / "tests" / "unit" / "test_pg_native_tls.py",
    ROOT / "tests" / "unit" / "test_pg_statement_cycles.py",
]


def test_the_engine_tests_pass_with_the_engine_built_under_address_sanitizer(
    tmp_path: Path,
) -> None:
    """The whole engine (its thread, its queue, the durations added to queued events, its TLS
    sides) built with -fsanitize=address and loaded into a Python of its own, which runs the
    engine's tests: an out-of-bounds write that the normal build survives silently fails
    here."""
    gcc = shutil.which("gcc")
    assert gcc is not None, "gcc is needed to build the native relay (apt-get install gcc)"
    package = tmp_path / "jitvault_postgres"
    shutil.copytree(FRAMING, package, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    includes = sysconfig.get_paths()["include"]
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    subprocess.run(
        [
            gcc, "-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer", "-shared",
            "-fPIC", "-Wall", "-Wextra", "-Wno-unused-parameter", f"-I{includes}",
            "-DJV_TLS=1", str(package / "_relay.c"), "-o", str(package / f"_relay{suffix}"),
            "-lssl", "-lcrypto",
        ],
        check=True,
        timeout=120,
    )  # fmt: skip
    libasan = subprocess.run(
        [gcc, "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
    ).stdout.strip()
    reports = tmp_path / "asan"
    env = {
        **os.environ,
        "LD_PRELOAD": libasan,
        "ASAN_OPTIONS": f"detect_leaks=0:log_path={reports}",
        "PYTHONPATH": str(tmp_path),
    }
    which = subprocess.run(
        [sys.executable, "-c", "from jitvault_postgres import _relay; print(_relay.__file__)"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert which.stdout.strip() == str(package / f"_relay{suffix}"), which.stderr[-2000:]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
         *map(str, ENGINE_TESTS)],
        capture_output=True, text=True, env=env, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip
    found = sorted(tmp_path.glob("asan*"))
    assert not found, found[0].read_text()[-4000:]
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert " passed" in done.stdout

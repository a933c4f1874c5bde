"""Vault throughput next to the raw AES-GCM primitive, measured in the same run.

    .venv/bin/python bench/bench_vault.py                 # SQLite in a temp dir
    .venv/bin/python bench/bench_vault.py --postgres      # also a scratch PostgreSQL database

Rows, each as operations per second and as a ratio to the raw primitive of the same direction:

* raw AES-GCM      ``cryptography``'s AESGCM on a 32-byte payload, fresh 96-bit nonce, 60-byte AAD
* keyring          ``Keyring.encrypt`` / ``decrypt``: the envelope (key lookup, AAD bound to the
                   row, a new AESGCM object, base64 text, version prefix), no database
* vault <db>       ``seal_column`` and one commit per secret (the term lock, the UPDATE);
                   ``open_column`` per secret in its own read transaction

No timing is asserted: the ratios say where the time goes on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import insert

from jitvault.config import load_settings
from jitvault.crypto import CipherContext
from jitvault.domain import Sensitive
from jitvault.services import Node, system
from jitvault.storage import sealed
from jitvault.storage import tables as t

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.support import PG_HOST_DSN, scratch_postgres  # noqa: E402


@dataclass
class Row:
    operation: str
    n: int
    ops_per_s: float
    anchor: str  # "encrypt" or "decrypt": which raw row it is compared to


def rate(n: int, fn: Callable[[int], object], repeats: int = 3) -> float:
    """Best-of-``repeats`` operations per second of ``fn(i)`` for i in range(n)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, time.perf_counter() - start)
    return n / best


def bench_raw(payload: bytes, n: int) -> list[Row]:
    aesgcm = AESGCM(AESGCM.generate_key(bit_length=256))
    aad = b"jitvault|jv1|accounts|123456|secret|1".ljust(60, b"-")
    nonces = [os.urandom(12) for _ in range(n)]
    sealed_values = [aesgcm.encrypt(nonce, payload, aad) for nonce in nonces]

    def encrypt(_: int) -> bytes:
        return aesgcm.encrypt(os.urandom(12), payload, aad)

    def decrypt(i: int) -> bytes:
        return aesgcm.decrypt(nonces[i], sealed_values[i], aad)

    return [
        Row("raw AES-GCM encrypt", n, rate(n, encrypt), "encrypt"),
        Row("raw AES-GCM decrypt", n, rate(n, decrypt), "decrypt"),
    ]


def bench_keyring(node: Node, payload: bytes, n: int) -> list[Row]:
    keyring = node.vault.keyring
    value = Sensitive(payload)
    contexts = [CipherContext("accounts", i, "secret") for i in range(n)]
    envelopes = [keyring.encrypt(value, ctx) for ctx in contexts]
    assert keyring.decrypt(envelopes[0], contexts[0]).reveal() == payload
    return [
        Row(
            "keyring encrypt (no DB)",
            n,
            rate(n, lambda i: keyring.encrypt(value, contexts[i])),
            "encrypt",
        ),
        Row(
            "keyring decrypt (no DB)",
            n,
            rate(n, lambda i: keyring.decrypt(envelopes[i], contexts[i])),
            "decrypt",
        ),
    ]


def _add_rows(node: Node, n: int) -> list[int]:
    """One target and ``n`` empty accounts, inserted directly (setup, not measured)."""
    now = datetime.now(UTC)
    with node.db.begin() as conn:
        target_id = conn.execute(
            insert(t.targets).values(
                name=f"bench-{secrets.token_hex(3)}", kind="postgres", options="{}", created_at=now
            )
        ).inserted_primary_key[0]
        conn.execute(
            insert(t.accounts),
            [
                {
                    "target_id": target_id,
                    "username": f"u{i}",
                    "mode": "injected",
                    "status": "ok",
                    "created_at": now,
                }
                for i in range(n)
            ],
        )
        rows = conn.execute(
            t.accounts.select()
            .with_only_columns(t.accounts.c.id)
            .where(t.accounts.c.target_id == target_id)
            .order_by(t.accounts.c.id)
        ).scalars()
        return list(rows)


def bench_db(node: Node, label: str, payload: bytes, n: int) -> list[Row]:
    ids = _add_rows(node, n)
    value = Sensitive(payload)
    col = t.ACCOUNT_SECRET

    def store(i: int) -> None:
        with node.write() as tx:  # one transaction, one commit per secret
            sealed.seal_column(tx.conn, tx.keyring, col, ids[i], value)

    def load(i: int) -> Sensitive[bytes] | None:
        with node.read() as conn:
            return sealed.open_column(conn, node.vault.keyring, col, ids[i])

    stored = rate(n, store, repeats=1)
    loaded = rate(n, load, repeats=1)
    opened = load(0)
    assert opened is not None
    assert opened.reveal() == payload
    return [
        Row(f"vault encrypt+store ({label})", n, stored, "encrypt"),
        Row(f"vault load+decrypt ({label})", n, loaded, "decrypt"),
    ]


@contextlib.contextmanager
def open_node(kind: str) -> Iterator[Node]:
    with tempfile.TemporaryDirectory(prefix="jv-bench-") as tmp, _database(kind, Path(tmp)) as url:
        settings = load_settings(None, data_dir=str(Path(tmp) / "data"), database_url=url)
        node = Node.open(settings)
        try:
            system.initialize(node, "admin")
            yield node
        finally:
            node.close()


@contextlib.contextmanager
def _database(kind: str, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'bench.db'}"
        return
    with scratch_postgres("jvbench") as url:
        yield url


def print_table(rows: list[Row]) -> None:
    raw = {r.anchor: r.ops_per_s for r in rows if r.operation.startswith("raw")}
    head = f"{'operation':<34} {'n':>7} {'ops/s':>12} {'ratio to raw':>13} {'raw is x faster':>16}"
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = r.ops_per_s / raw[r.anchor]
        print(
            f"{r.operation:<34} {r.n:>7} {r.ops_per_s:>12,.0f} {ratio:>13.4f} {1 / ratio:>15.1f}x"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--payload", type=int, default=32, help="secret size in bytes (32)")
    parser.add_argument("--raw-ops", type=int, default=100_000, help="raw/keyring loop (100000)")
    parser.add_argument("--db-ops", type=int, default=2_000, help="database loop (2000)")
    parser.add_argument(
        "--postgres", action="store_true", help=f"also PostgreSQL at {PG_HOST_DSN} (scratch db)"
    )
    args = parser.parse_args(argv)
    payload = secrets.token_bytes(args.payload)

    rows = bench_raw(payload, args.raw_ops)
    with open_node("sqlite") as node:
        rows += bench_keyring(node, payload, args.raw_ops)
        rows += bench_db(node, "SQLite", payload, args.db_ops)
    if args.postgres:
        with open_node("postgres") as node:
            rows += bench_db(node, "PostgreSQL", payload, args.db_ops)

    print(
        f"vault vs raw AES-GCM: {args.payload}-byte secrets, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

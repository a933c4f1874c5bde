"""How long each recorded statement ran: :class:`jitvault_postgres.protocol.StatementCycles`
(the Python relay's), by hand and held against the native relay's ``_cycles.h`` (through
``_relay.Cycles``) on arbitrary conversations. Sans-IO: times are given, not read."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from jitvault_postgres import protocol as pg

try:
    from jitvault_postgres import _relay
except ImportError:  # test_pg_native_framer says so
    _relay = None  # type: ignore[assignment]


def _sent(cycles: pg.StatementCycles, types: bytes, now_us: int) -> None:
    cycles.sent([(bytes([t]), b"", b"") for t in types], now_us)


def test_a_query_is_a_cycle_and_the_parses_before_a_sync_are_one() -> None:
    cycles = pg.StatementCycles()
    _sent(cycles, b"Q", 100)
    _sent(cycles, b"PP", 150)
    _sent(cycles, b"S", 170)
    _sent(cycles, b"SF", 180)  # a prepared statement run again, a function call: no statement
    _sent(cycles, b"PX", 200)  # no Sync yet: not a cycle the server will answer
    assert cycles.ready(1, 300) == [(1, 200)]
    assert cycles.ready(1, 400) == [(2, 250)]
    assert cycles.ready(2, 500) == []
    assert cycles.ready(3, 600) == []  # answers to nothing of the relay's change nothing
    _sent(cycles, b"S", 700)
    assert cycles.ready(1, 900) == [(1, 700)]  # the Parse at 200, ended by this Sync


def test_cycles_past_the_bound_join_the_newest_and_every_statement_gets_a_duration() -> None:
    cycles = pg.StatementCycles()
    _sent(cycles, b"Q" * (pg.CYCLES_MAX + 8), 10)
    done = cycles.ready(pg.CYCLES_MAX + 8, 50)
    assert done == [(1, 40)] * (pg.CYCLES_MAX - 1) + [(9, 40)]


_STEP = st.one_of(
    st.tuples(
        st.just("sent"),
        st.binary(min_size=1, max_size=40).map(
            lambda raw: bytes(b"QPSFXB"[byte % 6] for byte in raw)
        ),
    ),
    st.tuples(st.just("ready"), st.integers(min_value=0, max_value=40)),
)


@settings(max_examples=300)
@given(st.lists(_STEP, max_size=30))
def test_the_native_cycles_match_the_python_relay(steps: list[tuple[str, object]]) -> None:
    assert _relay is not None, "jitvault_postgres._relay is not built"
    assert _relay.CYCLES_MAX == pg.CYCLES_MAX
    python, native = pg.StatementCycles(), _relay.Cycles()
    for now, (kind, arg) in enumerate(steps, start=1):
        if kind == "sent":
            assert isinstance(arg, bytes)
            _sent(python, arg, now * 1000)
            native.sent(arg, now * 1000)
        else:
            assert isinstance(arg, int)
            assert native.ready(arg, now * 1000 + 7) == python.ready(arg, now * 1000 + 7)

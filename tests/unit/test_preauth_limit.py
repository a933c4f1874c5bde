"""The per-source bound on lookups for clients that have proven nothing yet."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from jitvault.proxy.preauth import LoginPlaces, PreAuthLimit


class Lookups:
    """A lookup that notes that it started, then waits until ``gate`` is set."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started: list[str] = []

    def __call__(self, name: str) -> str:
        self.started.append(name)
        self.gate.wait(5)
        return name


def test_a_source_has_at_most_its_places_and_other_sources_are_not_held_back() -> None:
    async def scenario() -> None:
        limit = PreAuthLimit(2)
        lookup = Lookups()
        started, gate = lookup.started, lookup.gate
        flood = [asyncio.ensure_future(limit.run("10.0.0.1", lookup, f"f{i}")) for i in range(6)]
        other = asyncio.ensure_future(limit.run("10.0.0.2", lookup, "other"))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(started) == 3:
                break
        assert sorted(started) == ["f0", "f1", "other"]
        assert limit.in_flight("10.0.0.1") == 2
        assert limit.in_flight("10.0.0.2") == 1
        gate.set()
        assert await asyncio.gather(*flood, other) == ["f0", "f1", "f2", "f3", "f4", "f5", "other"]
        assert len(limit) == 0  # nothing is kept per address once it is idle

    asyncio.run(scenario())


def test_a_caller_that_gives_up_waiting_starts_nothing_and_one_running_keeps_its_place() -> None:
    async def scenario() -> None:
        limit = PreAuthLimit(1)
        lookup = Lookups()
        started, gate = lookup.started, lookup.gate
        running = asyncio.ensure_future(limit.run("s", lookup, "running"))
        waiting = asyncio.ensure_future(limit.run("s", lookup, "waiting"))
        await asyncio.sleep(0.05)
        waiting.cancel()  # its client went away before its turn
        running.cancel()  # its client went away while its lookup ran
        await asyncio.sleep(0.05)
        assert started == ["running"]
        # the abandoned lookup still runs in its thread: it keeps the source's one place
        assert limit.in_flight("s") == 1
        late = asyncio.ensure_future(limit.run("s", lookup, "late"))
        await asyncio.sleep(0.05)
        assert started == ["running"]
        gate.set()
        assert await late == "late"
        assert started == ["running", "late"]
        assert len(limit) == 0

    asyncio.run(scenario())


def test_login_places_bound_each_address_and_the_node_and_are_given_back_once() -> None:
    places = LoginPlaces(most=3, per_source=2)
    a1, a2 = places.admit("10.0.0.1"), places.admit("10.0.0.1")
    assert a1 is not None
    assert a2 is not None
    assert places.admit("10.0.0.1") is None  # the address's bound
    b1 = places.admit("10.0.0.2")
    assert b1 is not None
    assert places.admit("10.0.0.3") is None  # the node's bound, whatever the address
    assert (len(places), places.refused) == (3, 2)
    a1.release()
    a1.release()  # a second release gives nothing back
    assert (len(places), places.from_source("10.0.0.1")) == (2, 1)
    assert places.admit("10.0.0.3") is not None
    assert places.admit("10.0.0.1") is None  # the node is full again
    for place in (a2, b1):
        place.release()
    assert places.from_source("10.0.0.1") == places.from_source("10.0.0.2") == 0
    assert set(places._by_source) == {"10.0.0.3"}  # an address without logins leaves nothing


def test_refusals_are_logged_at_most_every_ten_seconds_with_their_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    places = LoginPlaces(most=1, per_source=1, clock=lambda: now[0])
    assert places.admit("10.0.0.1") is not None
    with caplog.at_level(logging.WARNING, logger="jitvault.proxy.preauth"):
        for _ in range(80):
            assert places.admit("10.0.0.2") is None
            now[0] += 0.125
        assert places.admit("10.0.0.2") is None  # 10 s after the first warning
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("proxy: 1 new connection(s) refused")
    assert warnings[1].startswith("proxy: 80 new connection(s) refused")
    assert "all 1 places of the node are taken (server.proxy_max_startups)" in warnings[1]

"""The per-source bound on lookups for clients that have proven nothing yet."""

from __future__ import annotations

import asyncio
import threading

from jitvault.proxy.preauth import PreAuthLimit


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

"""The SSH relay's read gate: one side of a channel is read only when neither the other side's
flow control nor the recorder's backlog says no, so that neither releases what the other holds
(sans-IO: a fake channel that counts what it was told)."""

from __future__ import annotations

import asyncio

from jitvault_ssh.frontend import _ReadGate


class FakeChannel:
    def __init__(self) -> None:
        self.reading = True
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.reading = False
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.reading = True
        self.calls.append("resume")


def test_a_gate_made_closed_pauses_its_channel_when_attached_and_opens_on_go() -> None:
    gate, chan = _ReadGate("opening"), FakeChannel()
    gate.attach(chan)
    assert not chan.reading
    gate.go("opening")
    assert chan.reading
    assert chan.calls == ["pause", "resume"]


def test_flow_control_does_not_release_a_recorder_hold_nor_the_other_way_round() -> None:
    async def scenario() -> None:
        gate, chan = _ReadGate(), FakeChannel()
        gate.attach(chan)
        caught_up = asyncio.get_running_loop().create_future()
        gate.hold(caught_up)
        gate.stop("peer full")
        gate.go("peer full")  # the client's window opened again: the recorder is still behind
        await asyncio.sleep(0)
        assert not chan.reading
        gate.stop("peer full")
        caught_up.set_result(None)
        await asyncio.sleep(0)
        assert not chan.reading  # the recorder caught up, the peer is still full
        gate.go("peer full")
        assert chan.reading
        assert chan.calls == ["pause", "resume"]  # one pause, one resume: no extra turns

    asyncio.run(scenario())


def test_two_holds_release_only_when_both_are_done() -> None:
    async def scenario() -> None:
        gate, chan = _ReadGate(), FakeChannel()
        gate.attach(chan)
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        gate.hold(first)
        gate.hold(second)
        first.set_result(None)
        await asyncio.sleep(0)
        assert not chan.reading
        second.set_result(None)
        await asyncio.sleep(0)
        assert chan.reading

    asyncio.run(scenario())


def test_a_gate_without_a_channel_yet_applies_its_state_when_one_is_attached() -> None:
    gate, chan = _ReadGate(), FakeChannel()
    gate.stop("peer full")  # the client's window filled before the upstream channel opened
    gate.attach(chan)
    assert not chan.reading

"""The test helpers' own promises, where a broken one shows up only as a rare flake elsewhere."""

from __future__ import annotations

from tests.support import free_port


def test_free_port_never_hands_out_the_same_port_twice() -> None:
    # A server takes two proxy ports from two calls in a row; the kernel may give a port that was
    # just released to the next bind(0), which made a server's two proxies collide once in CI.
    # 1,000 draws from ~28,000 ephemeral ports repeat with near certainty without the guard.
    ports = [free_port() for _ in range(1000)]
    assert len(set(ports)) == len(ports)

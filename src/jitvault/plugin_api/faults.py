"""Crash injection for tests: kill this process with SIGKILL at a named step.

Core services and plugins mark the points between their non-atomic steps with
:func:`crash_point`; a test sets ``JITVAULT_FAULT_CRASH_AT`` to one step name and checks that a
restart (or a retry) converges. Unset, a crash point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

#: set to a step name to SIGKILL this process there (crash-injection tests only)
FAULT_ENV = "JITVAULT_FAULT_CRASH_AT"


def crash_point(step: str) -> None:
    """SIGKILL this process if ``JITVAULT_FAULT_CRASH_AT`` names ``step``."""
    if os.environ.get(FAULT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["FAULT_ENV", "crash_point"]

"""Names threads (the calling one, or a pool's as each starts) at the operating-system level,
so that ``top -H``, ``perf``, ``py-spy`` and ``/proc/<pid>/task/*/comm`` tell jitvault's threads
apart (Python 3.11 names threads only inside Python). Linux only; elsewhere, and on any failure,
naming does nothing: a name is a help to operators, never a reason to stop. Imports nothing of
jitvault's."""

from __future__ import annotations

import ctypes
import sys
from concurrent.futures import ThreadPoolExecutor

#: Linux keeps 15 bytes of a thread's name (and a NUL)
MAX_NAME_BYTES = 15
_PR_SET_NAME = 15


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` (cut to 15 bytes) as its OS-level name."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:MAX_NAME_BYTES]), 0, 0, 0)
    except (OSError, AttributeError):
        return


def named_thread_pool(role: str, max_workers: int | None = None) -> ThreadPoolExecutor:
    """A thread pool whose threads are ``jitvault-<role>_N`` in Python and ``jv-<role>`` at the
    OS level (named once each, when it starts), so no worker inherits its creator's name."""
    return ThreadPoolExecutor(
        max_workers=max_workers,
        thread_name_prefix=f"jitvault-{role}",
        initializer=name_os_thread,
        initargs=(f"jv-{role}",),
    )


__all__ = ["MAX_NAME_BYTES", "name_os_thread", "named_thread_pool"]

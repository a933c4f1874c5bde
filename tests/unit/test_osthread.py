"""Thread names at the OS level: what ``top -H`` and ``perf`` show for jitvault's pools."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from jitvault.osthread import MAX_NAME_BYTES, name_os_thread, named_thread_pool

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux names only")


def _os_name_of_current_thread() -> str:
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


@linux_only
def test_a_pools_threads_carry_its_role_in_python_and_in_the_os() -> None:
    with named_thread_pool("tester", max_workers=2) as pool:
        names = {
            pool.submit(
                lambda: (threading.current_thread().name, _os_name_of_current_thread())
            ).result()
            for _ in range(4)
        }
    assert {os_name for _, os_name in names} == {"jv-tester"}
    assert all(py_name.startswith("jitvault-tester_") for py_name, _ in names), names
    assert _os_name_of_current_thread() != "jv-tester"  # the caller keeps its own name


@linux_only
def test_a_long_name_is_cut_to_what_linux_keeps_not_refused() -> None:
    def run() -> None:
        name_os_thread("jv-" + "x" * 40)
        seen.append(_os_name_of_current_thread())

    seen: list[str] = []
    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    assert seen == ["jv-" + "x" * (MAX_NAME_BYTES - 3)]

"""One call of the SSH plugin in a process of its own, so that a test can ``kill -9`` it.

``python -m tests.ssh_plugin_call`` reads a JSON request on stdin (secrets included: never on
the command line) and runs one of ``create_account``, ``drop_account``, ``elevate``. With
``JITVAULT_FAULT_CRASH_AT`` set, the plugin SIGKILLs this process at that step.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime
from typing import Any

from jitvault.domain import Sensitive
from jitvault.plugin_api import AccountTemplate, TargetAccess
from jitvault_ssh import SshTarget


async def call(request: dict[str, Any]) -> None:
    plugin = SshTarget()
    target = TargetAccess(
        "web-1", request["options"], request["admin_user"], Sensitive(request["admin_secret"])
    )
    template = AccountTemplate("crash", grant_roles=tuple(request.get("groups", ())))
    user = request["user"]
    expires_at = datetime.fromisoformat(request["expires_at"])
    op = request["op"]
    if op == "create_account":
        secret = Sensitive(request["secret"])
        await plugin.create_account(target, template, user, secret, expires_at)
    elif op == "drop_account":
        await plugin.drop_account(target, template, user)
    elif op == "elevate":
        await plugin.elevate(target, user, request["role"], expires_at)
    else:
        raise SystemExit(f"unknown op {op!r}")


if __name__ == "__main__":
    asyncio.run(call(json.loads(sys.stdin.read())))

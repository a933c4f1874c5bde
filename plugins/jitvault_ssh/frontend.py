"""The SSH session proxy (placeholder: being written)."""

from __future__ import annotations

from jitvault.plugin_api import ProxyContext, ProxyListener, Unsupported


class SshFrontend:
    """The ssh kind's :class:`~jitvault.plugin_api.ProtocolFrontend` (one per process)."""

    protocol = "ssh"

    async def listen(self, host: str, port: int, ctx: ProxyContext) -> ProxyListener:
        raise Unsupported("the SSH proxy is not built yet")

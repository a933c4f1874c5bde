"""The proxy listeners of a node: one asyncio loop in a thread of its own, one listener per
target kind that has a front end, and the session watcher."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import uvloop

from jitvault.crypto import ensure_self_signed, server_context
from jitvault.plugin_api import ProtocolFrontend, ProxyListener
from jitvault.proxy.context import NodeProxyContext
from jitvault.proxy.registry import SessionRegistry
from jitvault.services import Node

log = logging.getLogger(__name__)


def _ports(node: Node) -> dict[str, int]:
    cfg = node.settings.server
    return {"postgres": cfg.pg_proxy_port, "ssh": cfg.ssh_proxy_port}


class ProxyServer:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.registry = SessionRegistry(node)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._listeners: list[ProxyListener] = []
        self.bound: dict[str, int] = {}

    def _tls(self) -> tuple[Path, Path]:
        cfg, data = self.node.settings.server, self.node.settings.data_dir
        cert = cfg.tls_cert or data / "proxy.crt"
        key = cfg.tls_key or data / "proxy.key"
        if cfg.tls_cert is None:
            ensure_self_signed(cert, key, sorted({cfg.listen, "localhost", "127.0.0.1"}))
        return cert, key

    async def _start(self) -> None:
        log.debug("session proxies on a %s loop", type(asyncio.get_running_loop()).__module__)
        cert, key = self._tls()
        tls = server_context(cert, key)
        ports = _ports(self.node)
        for kind in self.node.targets.kinds():
            frontend: ProtocolFrontend | None = self.node.targets.get(kind).frontend()
            if frontend is None or kind not in ports:
                continue
            ctx = NodeProxyContext(self.node, self.registry, frontend.protocol, tls)
            listener = await frontend.listen(self.node.settings.server.listen, ports[kind], ctx)
            self._listeners.append(listener)
            self.bound[kind] = listener.port
            log.info(
                "%s proxy listening on %s:%s",
                kind,
                self.node.settings.server.listen,
                self.bound[kind],
            )
        asyncio.get_running_loop().create_task(self.registry.watch())

    def _run(self) -> None:
        loop = uvloop.new_event_loop()  # faster sockets for the relays
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start())
        except Exception:
            log.exception("the session proxies could not start")
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()

    def start(self, timeout: float = 15.0) -> None:
        self._thread = threading.Thread(target=self._run, name="jitvault-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(timeout)

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def _close() -> None:
            for listener in self._listeners:
                listener.close()
            loop.stop()

        asyncio.run_coroutine_threadsafe(_close(), loop)
        if self._thread is not None:
            self._thread.join(10)


__all__ = ["ProxyServer"]

"""The proxy listeners of a node: one asyncio loop (uvloop when installed) in a thread of its
own, one listener per target kind that has a front end, the session watcher and the recording
sink's writer."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from pathlib import Path

from jitvault.crypto import ensure_self_signed, server_context
from jitvault.errors import Unavailable
from jitvault.osthread import name_os_thread, named_thread_pool
from jitvault.plugin_api import NODE_STOPPING, ProtocolFrontend, ProxyListener
from jitvault.proxy.context import NodeProxyContext
from jitvault.proxy.preauth import LoginPlaces, PreAuthLimit
from jitvault.proxy.recording import RecordingSink
from jitvault.proxy.registry import SessionRegistry
from jitvault.services import Node

log = logging.getLogger(__name__)

#: the interpreter's thread switch interval while proxies run (CPython's default: 5 ms)
SWITCH_INTERVAL_SECONDS = 0.0005

#: how long shutdown waits for the queued recordings to be written
SHUTDOWN_FLUSH_SECONDS = 10.0
#: how long shutdown waits for the cut sessions' ends to be recorded
SHUTDOWN_CUT_SECONDS = 5.0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (a faster relay), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _ports(node: Node) -> dict[str, int]:
    cfg = node.settings.server
    return {"postgres": cfg.pg_proxy_port, "ssh": cfg.ssh_proxy_port}


class ProxyServer:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.registry = SessionRegistry(node)
        self.recordings = RecordingSink(node, on_failure=self.registry.cut)
        cfg = node.settings.server
        self.preauth = PreAuthLimit(cfg.proxy_preauth_per_source)
        self.logging_in = LoginPlaces(cfg.proxy_max_startups, cfg.proxy_max_startups_per_source)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._listeners: list[ProxyListener] = []
        self.bound: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._failure: str | None = None
        # the loop's default executor (``asyncio.to_thread``: logins, session opens and ends),
        # named so that its threads do not inherit the loop thread's name
        self._io = named_thread_pool("proxy-io")

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
            ctx = NodeProxyContext(
                self.node,
                self.registry,
                self.recordings,
                frontend.protocol,
                tls,
                self.preauth,
                self.logging_in,
            )
            listener = await frontend.listen(self.node.settings.server.listen, ports[kind], ctx)
            self._listeners.append(listener)
            self.bound[kind] = listener.port
            log.info(
                "%s proxy listening on %s:%s",
                kind,
                self.node.settings.server.listen,
                self.bound[kind],
            )
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.registry.watch()),
            loop.create_task(self.recordings.run()),
        ]

    def _run(self) -> None:
        name_os_thread("jv-proxy")
        loop = new_event_loop()
        self._loop = loop
        loop.set_default_executor(self._io)
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start())
        except Exception as exc:
            log.debug("the session proxies could not start", exc_info=True)
            self._failure = f"{type(exc).__name__}: {exc}"
            for listener in self._listeners:
                listener.close()
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()

    def start(self, timeout: float = 15.0) -> None:
        # the relay shares the GIL with the recording writer (and the API's threads): switch
        # often, so that a batch being encrypted does not stall every session for 5 ms turns
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_SECONDS))
        self._thread = threading.Thread(target=self._run, name="jitvault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise Unavailable(f"the session proxies did not start within {timeout:.0f} s")
        if self._failure is not None:
            raise Unavailable(
                f"the session proxies could not start ({self._failure}); "
                "check server.listen and the proxy ports, or set server.proxies = false"
            )

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def _close() -> None:
            for listener in self._listeners:
                listener.close()
            # every live session here is cut, its client told why, its end recorded
            try:
                async with asyncio.timeout(SHUTDOWN_CUT_SECONDS):
                    await self.registry.cut_all(NODE_STOPPING)
            except TimeoutError:
                log.warning(
                    "%d sessions did not end within %.0f s of the shutdown: they are ended as"
                    " lost after server.session_lost_seconds (by any node's worker)",
                    self.registry.held,
                    SHUTDOWN_CUT_SECONDS,
                )
            try:
                await asyncio.wait_for(self.recordings.flush(), SHUTDOWN_FLUSH_SECONDS)
            except Exception:
                log.exception("queued session recordings could not be written at shutdown")
            for listener in self._listeners:
                listener.release()
            self.recordings.close()
            self.registry.close()
            self._io.shutdown(wait=False)
            loop.stop()

        asyncio.run_coroutine_threadsafe(_close(), loop)
        if self._thread is not None:
            self._thread.join(SHUTDOWN_CUT_SECONDS + SHUTDOWN_FLUSH_SECONDS + 5)


__all__ = ["ProxyServer"]

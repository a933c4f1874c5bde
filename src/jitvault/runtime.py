"""The composition root: one process runs the API, the session proxies and the worker.

This is the only module that wires the layers together; the CLI's local commands call it.
"""

from __future__ import annotations

import gc
import logging
import resource
import signal
import sys
import threading

import uvicorn

from jitvault.api import create_app
from jitvault.config import Settings
from jitvault.errors import JitvaultError
from jitvault.lifecycle import Worker
from jitvault.logoutput import LogOutput
from jitvault.proxy import ProxyServer
from jitvault.services import Node

log = logging.getLogger("jitvault")


#: the server's log lines (on standard error)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> LogOutput:
    """Log at ``level`` and above to standard error, written by a thread of its own
    (:class:`~jitvault.logoutput.LogOutput`: no thread waits for the log's reader)."""
    target = logging.StreamHandler(sys.stderr)
    target.setFormatter(logging.Formatter(LOG_FORMAT))
    output = LogOutput(target)
    root = logging.getLogger()
    root.setLevel(level.upper())
    root.addHandler(output)
    return output


def flush_logs() -> None:
    """Write what the log holds (each handler's flush is bounded: see LogOutput.flush)."""
    for handler in logging.getLogger().handlers:
        handler.flush()


def open_node(settings: Settings) -> Node:
    """Open the database (migrated) and unseal from the key file or Transit if possible."""
    node = Node.open(settings)
    try:
        if node.vault.auto_unseal():
            log.info("vault unsealed (%s key provider)", settings.keys.provider)
        elif node.vault.is_initialized():
            log.warning("vault is sealed: submit unseal shares with 'jitvault operator unseal'")
        else:
            log.warning("vault is not initialized: run 'jitvault operator init'")
    except JitvaultError as exc:
        log.error("vault stays sealed: %s", exc)
    return node


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one; returns the soft limit now.

    Every proxied session holds two sockets (the client's and the target's): the usual soft
    limit of 1024 would refuse connections after about 500 sessions.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # e.g. an unlimited hard limit the kernel refuses
            log.warning("cannot raise the open files limit from %s to %s: %s", soft, hard, exc)
    return soft


#: objects allocated (net) between two collections of the youngest generation (Python: 700)
GC_YOUNG_THRESHOLD = 10_000


def tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the relays' path. A proxy allocates a few small
    containers per statement (its text on its way to the recorder, for a few milliseconds);
    with Python's defaults they soon reach the oldest generation, and full collections then
    walk the whole heap, the modules and the ORM's metadata loaded at start included (measured:
    a quarter of the proxy thread's CPU under pgbench). What exists at start is frozen (never
    collected: it lives as long as the process), and the youngest generation is collected
    less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def write_logs_at_sigterm() -> None:
    """SIGTERM still ends the process as a signal, once the log is written: no exit handler
    runs at a signal's default action, and uvicorn, once it has shut down at a SIGTERM, raises
    it again with the handler it found (this one) in place. From the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return

    def flush_then_end(signum: int, _frame: object) -> None:
        flush_logs()
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    signal.signal(signal.SIGTERM, flush_then_end)


def serve(node: Node) -> None:
    """Run the API, the proxies and the background worker until interrupted. Raises
    Unavailable, having closed the node, when the proxies cannot start."""
    cfg = node.settings.server
    log.debug("open files limit: %s", raise_open_files_limit())
    proxies = ProxyServer(node) if cfg.proxies else None
    if proxies is not None:
        try:
            proxies.start()
        except JitvaultError:
            node.close()
            raise
    worker = Worker(node)
    worker.start()
    stopped = threading.Event()

    def stop() -> None:
        """Cut the proxies' sessions (their clients told why, their ends and recordings
        written), stop the worker, close the store; once."""
        if stopped.is_set():
            return
        stopped.set()
        if proxies is not None:
            proxies.stop()
        worker.stop()
        node.close()

    # on SIGTERM or SIGINT uvicorn shuts the API down, runs the app's shutdown, then raises the
    # signal again, which ends the process: the node stops in the app's shutdown, not after
    # uvicorn.run returns
    app = create_app(node, on_shutdown=stop)
    tune_garbage_collector()
    write_logs_at_sigterm()
    try:
        uvicorn.run(
            app,
            host=cfg.listen,
            port=cfg.api_port,
            log_level=node.settings.log_level.lower(),
            log_config=None,  # its lines go through the root logger's output, as ours do
            access_log=False,
            server_header=False,
        )
    finally:
        stop()


__all__ = [
    "configure_logging",
    "flush_logs",
    "open_node",
    "raise_open_files_limit",
    "serve",
    "tune_garbage_collector",
    "write_logs_at_sigterm",
]

"""The composition root: one process runs the API, the session proxies and the worker.

This is the only module that wires the layers together; the CLI's local commands call it.
"""

from __future__ import annotations

import logging
import sys

import uvicorn

from jitvault.api import create_app
from jitvault.config import Settings
from jitvault.errors import JitvaultError
from jitvault.lifecycle import Worker
from jitvault.proxy import ProxyServer
from jitvault.services import Node

log = logging.getLogger("jitvault")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


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


def serve(node: Node) -> None:
    """Run the API, the proxies and the background worker until interrupted. Raises
    Unavailable, having closed the node, when the proxies cannot start."""
    cfg = node.settings.server
    proxies = ProxyServer(node) if cfg.proxies else None
    if proxies is not None:
        try:
            proxies.start()
        except JitvaultError:
            node.close()
            raise
    worker = Worker(node)
    worker.start()
    app = create_app(node)
    try:
        uvicorn.run(
            app,
            host=cfg.listen,
            port=cfg.api_port,
            log_level=node.settings.log_level.lower(),
            access_log=False,
            server_header=False,
        )
    finally:
        if proxies is not None:
            proxies.stop()
        worker.stop()
        node.close()


__all__ = ["configure_logging", "open_node", "serve"]

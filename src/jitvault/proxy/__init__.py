"""Protocol-free session machinery: listeners, the session registry, cutting on expiry or
revoke, and the core's side of the proxy contract. Knows no protocol: front ends are plugins."""

from jitvault.proxy.context import NodeProxyContext
from jitvault.proxy.registry import SessionRegistry
from jitvault.proxy.server import ProxyServer

__all__ = ["NodeProxyContext", "ProxyServer", "SessionRegistry"]

"""What plugins implement and how the core finds them."""

from jitvault.plugin_api.contracts import (
    AccountTemplate,
    NotifierPlugin,
    TargetAccess,
    TargetPlugin,
    TargetRejected,
    Unsupported,
)
from jitvault.plugin_api.proxy import (
    CONNECT_AGAIN_HINT,
    NODE_STOPPING,
    Cut,
    ProtocolFrontend,
    ProxyContext,
    ProxyListener,
    RenderedStatements,
    SessionHandle,
    SessionTicket,
    render_statement,
    statements_done,
)
from jitvault.plugin_api.registry import (
    NOTIFIERS_GROUP,
    TARGETS_GROUP,
    NotifierRegistry,
    PluginRegistry,
    TargetRegistry,
    discover_notifiers,
    discover_targets,
)

__all__ = [
    "CONNECT_AGAIN_HINT",
    "NODE_STOPPING",
    "NOTIFIERS_GROUP",
    "TARGETS_GROUP",
    "AccountTemplate",
    "Cut",
    "NotifierPlugin",
    "NotifierRegistry",
    "PluginRegistry",
    "ProtocolFrontend",
    "ProxyContext",
    "ProxyListener",
    "RenderedStatements",
    "SessionHandle",
    "SessionTicket",
    "TargetAccess",
    "TargetPlugin",
    "TargetRegistry",
    "TargetRejected",
    "Unsupported",
    "discover_notifiers",
    "discover_targets",
    "render_statement",
    "statements_done",
]

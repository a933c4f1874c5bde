"""What plugins implement and how the core finds them."""

from jitvault.plugin_api.contracts import NotifierPlugin, TargetPlugin, Unsupported
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
    "NOTIFIERS_GROUP",
    "TARGETS_GROUP",
    "NotifierPlugin",
    "NotifierRegistry",
    "PluginRegistry",
    "TargetPlugin",
    "TargetRegistry",
    "Unsupported",
    "discover_notifiers",
    "discover_targets",
]

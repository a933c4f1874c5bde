"""What plugins implement and how the core finds them."""

from jitvault.plugin_api.contracts import TargetPlugin, Unsupported
from jitvault.plugin_api.registry import NOTIFIERS_GROUP, TARGETS_GROUP, TargetRegistry

__all__ = ["NOTIFIERS_GROUP", "TARGETS_GROUP", "TargetPlugin", "TargetRegistry", "Unsupported"]

"""Plugin discovery through entry points. The core never imports a plugin by name."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from jitvault.errors import NotFound
from jitvault.plugin_api.contracts import NotifierPlugin, Plugin, TargetPlugin

TARGETS_GROUP = "jitvault.targets"
NOTIFIERS_GROUP = "jitvault.notifiers"

log = logging.getLogger(__name__)

P = TypeVar("P", bound=Plugin)


class PluginRegistry(Generic[P]):
    """Plugins of one kind by name. A plugin that fails to load is logged and left out."""

    def __init__(self, plugins: dict[str, P], what: str) -> None:
        self._plugins = plugins
        self._what = what

    @classmethod
    def discover(cls, group: str, base: type[P], what: str) -> PluginRegistry[P]:
        plugins: dict[str, P] = {}
        for ep in entry_points(group=group):
            try:
                plugin = ep.load()()
            except Exception as exc:  # a broken plugin must not take the server down
                log.error("%s plugin %s failed to load: %s", what, ep.name, type(exc).__name__)
                continue
            if not isinstance(plugin, base):
                log.error("entry point %s is not a %s; ignored", ep.name, base.__name__)
                continue
            plugins[plugin.kind] = plugin
        return cls(plugins, what)

    def kinds(self) -> list[str]:
        return sorted(self._plugins)

    def get(self, kind: str) -> P:
        try:
            return self._plugins[kind]
        except KeyError:
            raise NotFound(
                f"no {self._what} plugin for kind {kind!r}",
                hint=f"installed kinds: {', '.join(self.kinds()) or 'none'}",
            ) from None


TargetRegistry = PluginRegistry[TargetPlugin]
NotifierRegistry = PluginRegistry[NotifierPlugin]


def discover_targets() -> TargetRegistry:
    return PluginRegistry.discover(TARGETS_GROUP, TargetPlugin, "target")


def discover_notifiers() -> NotifierRegistry:
    return PluginRegistry.discover(NOTIFIERS_GROUP, NotifierPlugin, "notifier")


__all__ = [
    "NOTIFIERS_GROUP",
    "TARGETS_GROUP",
    "NotifierRegistry",
    "PluginRegistry",
    "TargetRegistry",
    "discover_notifiers",
    "discover_targets",
]

"""Plugin discovery through entry points. The core never imports a plugin by name."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from jitvault.errors import NotFound
from jitvault.plugin_api.contracts import TargetPlugin

TARGETS_GROUP = "jitvault.targets"
NOTIFIERS_GROUP = "jitvault.notifiers"

log = logging.getLogger(__name__)


class TargetRegistry:
    """Target plugins by kind. A plugin that fails to load is logged and left out."""

    def __init__(self, plugins: dict[str, TargetPlugin]) -> None:
        self._plugins = plugins

    @classmethod
    def discover(cls) -> TargetRegistry:
        plugins: dict[str, TargetPlugin] = {}
        for ep in entry_points(group=TARGETS_GROUP):
            try:
                plugin_cls = ep.load()
                plugin = plugin_cls()
            except Exception as exc:  # a broken plugin must not take the server down
                log.error("target plugin %s failed to load: %s", ep.name, type(exc).__name__)
                continue
            if not isinstance(plugin, TargetPlugin):
                log.error("entry point %s is not a TargetPlugin; ignored", ep.name)
                continue
            plugins[plugin.kind] = plugin
        return cls(plugins)

    def kinds(self) -> list[str]:
        return sorted(self._plugins)

    def get(self, kind: str) -> TargetPlugin:
        try:
            return self._plugins[kind]
        except KeyError:
            raise NotFound(
                f"no target plugin for kind {kind!r}",
                hint=f"installed kinds: {', '.join(self.kinds()) or 'none'}",
            ) from None


__all__ = ["NOTIFIERS_GROUP", "TARGETS_GROUP", "TargetRegistry"]

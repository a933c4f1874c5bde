"""Webhook notifier plugin (signed JSON, Slack-compatible option). Filled in by its issue."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from jitvault.plugin_api import NotifierPlugin


class WebhookOptions(BaseModel):
    url: str
    format: Literal["json", "slack"] = "json"


class WebhookNotifier(NotifierPlugin):
    kind = "webhook"
    config_model = WebhookOptions


__all__ = ["WebhookNotifier", "WebhookOptions"]

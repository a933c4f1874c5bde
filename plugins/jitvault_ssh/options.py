"""The options of an ``ssh`` target (validated by the core with the plugin's config model)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class SshTargetOptions(BaseModel):
    kind: Literal["ssh"] = "ssh"
    host: str
    port: int = Field(default=22, ge=1, le=65535)
    #: the target's host key ("ssh-ed25519 AAAA..."), pinned when the target is registered;
    #: a server presenting another key is refused
    host_key: str | None = None
    connect_timeout: float = Field(default=10.0, gt=0, le=120)


__all__ = ["SshTargetOptions"]

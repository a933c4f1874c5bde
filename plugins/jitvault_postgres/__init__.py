"""PostgreSQL target plugin. This issue registers the kind; the proxy and lifecycle follow."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from jitvault.plugin_api import TargetPlugin


class PostgresTargetOptions(BaseModel):
    kind: Literal["postgres"] = "postgres"
    host: str
    port: int = Field(default=5432, ge=1, le=65535)
    dbname: str = "postgres"
    sslmode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "prefer"


class PostgresTarget(TargetPlugin):
    """Registers the ``postgres`` target kind and its options."""

    kind = "postgres"
    config_model = PostgresTargetOptions


__all__ = ["PostgresTarget", "PostgresTargetOptions"]

"""PostgreSQL target plugin: the ``postgres`` kind, its options and its credential lifecycle.

The lifecycle (verify, rotate, ephemeral roles, elevations) lives in :mod:`.lifecycle`; the
session proxy (wire protocol) in its own modules.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Literal

import pydantic
from pydantic import BaseModel, Field

from jitvault.domain import Sensitive
from jitvault.errors import ValidationError
from jitvault.plugin_api import AccountTemplate, TargetAccess, TargetPlugin
from jitvault_postgres import lifecycle
from jitvault_postgres.frontend import PostgresFrontend


class PostgresTargetOptions(BaseModel):
    kind: Literal["postgres"] = "postgres"
    host: str
    port: int = Field(default=5432, ge=1, le=65535)
    dbname: str = "postgres"
    sslmode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = "prefer"


class PostgresTarget(TargetPlugin):
    """PostgreSQL targets: rotate passwords, create/drop ephemeral roles, grant/revoke roles.

    Every method is async, idempotent and safe to retry; it connects as ``target.admin_user``
    (except :meth:`verify`, which logs in as the account itself) and raises
    :class:`~jitvault.plugin_api.TargetRejected` (with the SQLSTATE, never the server's message)
    when the server refuses, or :class:`~jitvault.errors.ValidationError` for a name that is not
    a valid identifier (empty, NUL/control characters, more than 63 bytes) before any statement.
    """

    kind = "postgres"
    config_model = PostgresTargetOptions

    def endpoint(self, target: TargetAccess) -> lifecycle.Endpoint:
        """The connection parameters of ``target`` (its options validated again)."""
        try:
            opts = PostgresTargetOptions.model_validate({**target.options, "kind": self.kind})
        except pydantic.ValidationError:
            raise ValidationError(
                f"invalid options for postgres target {target.name!r}",
                hint="host, port, dbname, sslmode",
            ) from None
        return lifecycle.Endpoint(
            target_name=target.name,
            host=opts.host,
            port=opts.port,
            dbname=opts.dbname,
            sslmode=opts.sslmode,
            admin_user=target.admin_user,
            admin_secret=target.admin_secret,
        )

    async def verify(self, target: TargetAccess, username: str, secret: Sensitive[str]) -> bool:
        return await lifecycle.verify(self.endpoint(target), username, secret)

    async def rotate(
        self,
        target: TargetAccess,
        username: str,
        new: Sensitive[str],
        current: Sensitive[str] | None = None,
    ) -> None:
        # a new password replaces the old one: ``current`` needs no separate removal
        await lifecycle.rotate(self.endpoint(target), username, new)

    async def create_account(
        self,
        target: TargetAccess,
        template: AccountTemplate,
        username: str,
        secret: Sensitive[str],
        expires_at: datetime,
    ) -> None:
        await lifecycle.create_account(
            self.endpoint(target), template, username, secret, expires_at
        )

    async def drop_account(
        self, target: TargetAccess, template: AccountTemplate, username: str
    ) -> None:
        await lifecycle.drop_account(self.endpoint(target), template, username)

    async def elevate(
        self, target: TargetAccess, username: str, role: str, expires_at: datetime
    ) -> None:
        await lifecycle.elevate(self.endpoint(target), username, role, expires_at)

    async def revoke(self, target: TargetAccess, username: str, role: str) -> None:
        await lifecycle.revoke(self.endpoint(target), username, role)

    def frontend(self) -> PostgresFrontend:
        """The session proxy's front end: one per process (it holds the cancel keys)."""
        return _frontend()


@functools.cache
def _frontend() -> PostgresFrontend:
    return PostgresFrontend()


__all__ = ["PostgresTarget", "PostgresTargetOptions"]

"""Request and response bodies. Secrets come in as ``SecretStr`` and never go out."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, SecretStr

from jitvault.domain import Account, AccountMode, Role, Target, User


class UserIn(BaseModel):
    name: str
    role: Role
    groups: list[str] = Field(default_factory=list)
    password: SecretStr | None = None


class UserOut(BaseModel):
    id: int
    name: str
    role: Role
    groups: list[str]
    disabled: bool
    created_at: datetime | None

    @classmethod
    def of(cls, u: User) -> UserOut:
        return cls(
            id=u.id,
            name=u.name,
            role=u.role,
            groups=list(u.groups),
            disabled=u.disabled,
            created_at=u.created_at,
        )


class WhoAmI(BaseModel):
    name: str
    role: Role
    groups: list[str]
    token_id: str | None


class TokenIn(BaseModel):
    description: str = ""
    ttl: str | None = Field(default=None, description="e.g. 12h, 30d; none means no expiry")


class TokenOut(BaseModel):
    token: str
    user: str
    note: str = "shown once: store it now"


class LoginIn(BaseModel):
    username: str
    password: SecretStr


class TargetIn(BaseModel):
    name: str
    kind: str
    options: dict[str, Any] = Field(default_factory=dict)
    admin_user: str | None = None
    admin_password: SecretStr | None = None


class TargetOut(BaseModel):
    id: int
    name: str
    kind: str
    options: dict[str, Any]
    admin_user: str | None
    has_admin_secret: bool
    created_at: datetime | None

    @classmethod
    def of(cls, t: Target) -> TargetOut:
        return cls(
            id=t.id,
            name=t.name,
            kind=t.kind,
            options=t.options,
            admin_user=t.admin_user,
            has_admin_secret=t.has_admin_secret,
            created_at=t.created_at,
        )


class AccountIn(BaseModel):
    username: str
    mode: AccountMode = AccountMode.INJECTED
    password: SecretStr | None = None


class SecretIn(BaseModel):
    password: SecretStr


class AccountOut(BaseModel):
    id: int
    target: str
    username: str
    mode: AccountMode
    status: str
    has_secret: bool
    secret_updated_at: datetime | None
    created_at: datetime | None

    @classmethod
    def of(cls, a: Account) -> AccountOut:
        return cls(
            id=a.id,
            target=a.target_name,
            username=a.username,
            mode=a.mode,
            status=a.status.value,
            has_secret=a.has_secret,
            secret_updated_at=a.secret_updated_at,
            created_at=a.created_at,
        )


class InitIn(BaseModel):
    admin: str = "admin"
    shares: int | None = None
    threshold: int | None = None


class InitOut(BaseModel):
    admin: str
    admin_token: str
    shares: list[str]
    note: str = "shown once: store the token and distribute the shares now"


class UnsealIn(BaseModel):
    share: SecretStr


__all__ = [
    "AccountIn",
    "AccountOut",
    "InitIn",
    "InitOut",
    "LoginIn",
    "SecretIn",
    "TargetIn",
    "TargetOut",
    "TokenIn",
    "TokenOut",
    "UnsealIn",
    "UserIn",
    "UserOut",
    "WhoAmI",
]

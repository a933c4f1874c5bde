"""Request and response bodies. Secrets come in as ``SecretStr`` and never go out."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, SecretStr, model_validator

from jitvault.domain import (
    AccessRequest,
    Account,
    AccountMode,
    Grant,
    Role,
    Sensitive,
    Target,
    Template,
    User,
    UserSshKey,
)


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


class SshKeyIn(BaseModel):
    #: an OpenSSH public key line; a SecretStr all the same: whoever pastes a private key by
    #: mistake must not find it in a log or an error (it is refused, never echoed)
    public_key: SecretStr
    comment: str | None = Field(default=None, description="replaces the key line's comment")


class SshKeyOut(BaseModel):
    user: str
    algorithm: str
    fingerprint: str
    public_key: str
    comment: str
    created_at: datetime | None

    @classmethod
    def of(cls, k: UserSshKey) -> SshKeyOut:
        return cls(
            user=k.user,
            algorithm=k.algorithm,
            fingerprint=k.fingerprint,
            public_key=k.public_key,
            comment=k.comment,
            created_at=k.created_at,
        )


class LoginIn(BaseModel):
    username: str
    password: SecretStr


def _one_secret(password: SecretStr | None, key: SecretStr | None) -> Sensitive[str] | None:
    if password is not None and key is not None:
        raise ValueError("give a password or a private key, not both")
    given = password if password is not None else key
    return None if given is None else Sensitive(given.get_secret_value())


class TargetIn(BaseModel):
    name: str
    kind: str
    options: dict[str, Any] = Field(default_factory=dict)
    admin_user: str | None = None
    admin_password: SecretStr | None = None
    #: an OpenSSH or PEM private key (without a passphrase), instead of a password
    admin_private_key: SecretStr | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_admin_secret(self) -> TargetIn:
        _one_secret(self.admin_password, self.admin_private_key)
        return self

    def admin_secret(self) -> Sensitive[str] | None:
        return _one_secret(self.admin_password, self.admin_private_key)


class TargetUpdateIn(BaseModel):
    """What changes; what is left out stays. An option set to null or "" is removed (and read
    from the target again if the plugin pins it, e.g. an SSH host key)."""

    options: dict[str, Any] = Field(default_factory=dict)
    #: the new set of labels, replacing the old one
    labels: dict[str, str] | None = None
    admin_user: str | None = None
    admin_password: SecretStr | None = None
    admin_private_key: SecretStr | None = None

    @model_validator(mode="after")
    def _one_admin_secret(self) -> TargetUpdateIn:
        _one_secret(self.admin_password, self.admin_private_key)
        return self

    def admin_secret(self) -> Sensitive[str] | None:
        return _one_secret(self.admin_password, self.admin_private_key)


class TargetOut(BaseModel):
    id: int
    name: str
    kind: str
    options: dict[str, Any]
    admin_user: str | None
    has_admin_secret: bool
    created_at: datetime | None
    labels: dict[str, str] = Field(default_factory=dict)

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
            labels=t.labels,
        )


class AccountIn(BaseModel):
    username: str
    mode: AccountMode = AccountMode.INJECTED
    password: SecretStr | None = None
    #: an OpenSSH or PEM private key (without a passphrase), instead of a password
    private_key: SecretStr | None = None

    @model_validator(mode="after")
    def _one_account_secret(self) -> AccountIn:
        _one_secret(self.password, self.private_key)
        return self

    def secret(self) -> Sensitive[str] | None:
        return _one_secret(self.password, self.private_key)


class SecretIn(BaseModel):
    password: SecretStr | None = None
    private_key: SecretStr | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretIn:
        if _one_secret(self.password, self.private_key) is None:
            raise ValueError("give a password or a private key")
        return self

    def secret(self) -> Sensitive[str]:
        value = _one_secret(self.password, self.private_key)
        assert value is not None  # checked by the validator
        return value


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


class RequestIn(BaseModel):
    target: str
    account: str | None = Field(
        default=None, description="a shared account; with role: your own account to elevate"
    )
    role: str | None = None
    ephemeral: str | None = Field(default=None, description="an account template")
    duration: str = Field(description="e.g. 30m, 1h, 2h30m")
    reason: str
    start_at: datetime | None = None
    break_glass: bool = False
    end_on_disconnect: bool = False


class DecisionIn(BaseModel):
    comment: str = ""


class ReasonIn(BaseModel):
    reason: str


class RequestOut(BaseModel):
    id: int
    requester: str
    target: str
    kind: str
    name: str
    duration_seconds: int
    reason: str
    state: str
    created_at: datetime
    expires_at: datetime
    start_at: datetime | None
    break_glass: bool
    rule: str | None
    explanation: str
    required_approvals: int
    approver_groups: list[str]
    approvals: list[str]
    max_connections: int | None
    review_required: bool
    reviewed_by: str | None
    grant_id: int | None = None
    account: str | None = None
    end_on_disconnect: bool = False
    checkout: str = "refuse"
    #: its grant waits for its shared account to be checked in, at most until ``queued_until``
    queued: bool = False
    queued_until: datetime | None = None

    @classmethod
    def of(cls, r: AccessRequest, grant: Grant | None = None) -> RequestOut:
        queued = grant is not None and grant.waiting
        return cls(
            id=r.id,
            requester=r.requester,
            target=r.target,
            kind=r.kind.value,
            name=r.name,
            duration_seconds=int(r.duration.total_seconds()),
            reason=r.reason,
            state=r.state.value,
            created_at=r.created_at,
            expires_at=r.expires_at,
            start_at=r.start_at,
            break_glass=r.break_glass,
            rule=r.rule,
            explanation=r.explanation,
            required_approvals=r.required_approvals,
            approver_groups=list(r.approver_groups),
            approvals=list(r.approvals),
            max_connections=r.max_connections,
            review_required=r.review_required,
            reviewed_by=r.reviewed_by,
            grant_id=grant.id if grant else None,
            account=r.account,
            end_on_disconnect=r.end_on_disconnect,
            checkout=r.checkout,
            queued=queued,
            queued_until=grant.expires_at if grant and queued else None,
        )


class GrantOut(BaseModel):
    id: int
    request_id: int
    user: str
    target: str
    kind: str
    name: str
    # the account, role or template name, under the name the CLI's --json promises
    account: str
    state: str
    starts_at: datetime
    expires_at: datetime
    seconds_left: int
    max_connections: int | None
    break_glass: bool
    ended_at: datetime | None
    end_reason: str | None
    # the account sessions log in as on the target (the ephemeral or elevated one)
    login: str
    queued: bool
    end_on_disconnect: bool
    provisioned_at: datetime | None
    role_held_before: bool | None

    @classmethod
    def of(cls, g: Grant, now: datetime) -> GrantOut:
        left = 0
        if g.waiting:
            # waiting for its account: it gets its full duration when it starts (the end of
            # its window is only how long it may wait)
            left = int((g.expires_at - g.starts_at).total_seconds())
        elif g.state.value in ("approved", "active"):
            # time of access left: a scheduled grant's wait before it starts does not count
            left = max(0, int((g.expires_at - max(now, g.starts_at)).total_seconds()))
        return cls(
            id=g.id,
            request_id=g.request_id,
            user=g.user,
            target=g.target,
            kind=g.kind.value,
            name=g.name,
            account=g.name,
            state=g.state.value,
            starts_at=g.starts_at,
            expires_at=g.expires_at,
            seconds_left=left,
            max_connections=g.max_connections,
            break_glass=g.break_glass,
            ended_at=g.ended_at,
            end_reason=g.end_reason,
            login=g.login,
            queued=g.queued,
            end_on_disconnect=g.end_on_disconnect,
            provisioned_at=g.provisioned_at,
            role_held_before=g.role_held_before,
        )


class TemplateIn(BaseModel):
    name: str
    mode: str = "ephemeral"
    grant_roles: list[str] = Field(
        default_factory=list, description="roles (PostgreSQL) or groups (SSH) the account gets"
    )
    on_drop: str = "drop_owned"
    reassign_to: str | None = None


class TemplateOut(BaseModel):
    id: int
    target: str
    name: str
    mode: str
    grant_roles: list[str]
    on_drop: str
    reassign_to: str | None
    created_at: datetime | None

    @classmethod
    def of(cls, t: Template) -> TemplateOut:
        return cls(
            id=t.id,
            target=t.target,
            name=t.name,
            mode=t.mode,
            grant_roles=list(t.grant_roles),
            on_drop=t.on_drop,
            reassign_to=t.reassign_to,
            created_at=t.created_at,
        )


class ConnectIn(BaseModel):
    once: bool = False


class PolicyIn(BaseModel):
    document: str = Field(description="the policy as YAML (or JSON)")


class PolicyTestIn(BaseModel):
    document: str | None = Field(default=None, description="omit to test the active policy")
    as_user: str
    target: str
    account: str | None = None
    role: str | None = None
    ephemeral: str | None = None
    duration: str
    reason: str = ""
    at: datetime | None = None
    break_glass: bool = False


__all__ = [
    "AccountIn",
    "AccountOut",
    "ConnectIn",
    "DecisionIn",
    "GrantOut",
    "InitIn",
    "InitOut",
    "LoginIn",
    "PolicyIn",
    "PolicyTestIn",
    "ReasonIn",
    "RequestIn",
    "RequestOut",
    "SecretIn",
    "TargetIn",
    "TargetOut",
    "TemplateIn",
    "TemplateOut",
    "TokenIn",
    "TokenOut",
    "UnsealIn",
    "UserIn",
    "UserOut",
    "WhoAmI",
]

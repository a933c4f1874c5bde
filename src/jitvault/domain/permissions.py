"""Who may do what: the one table of permissions. Anything not listed here is denied."""

from __future__ import annotations

from enum import StrEnum

from jitvault.domain.identity import Principal, Role
from jitvault.errors import Forbidden


class Permission(StrEnum):
    USER_CREATE = "user.create"
    USER_READ = "user.read"
    TOKEN_CREATE_ANY = "token.create_any"
    TOKEN_READ_ANY = "token.read_any"
    SSH_KEY_MANAGE_ANY = "ssh_key.manage_any"
    SSH_KEY_READ_ANY = "ssh_key.read_any"
    TARGET_CREATE = "target.create"
    TARGET_UPDATE = "target.update"
    TARGET_READ = "target.read"
    ACCOUNT_CREATE = "account.create"
    ACCOUNT_READ = "account.read"
    KEY_ROTATE = "key.rotate"
    KEY_STATUS = "key.status"
    AUDIT_READ = "audit.read"
    REQUEST_CREATE = "request.create"
    REQUEST_READ_ANY = "request.read_any"
    REQUEST_DECIDE = "request.decide"
    REQUEST_REVIEW = "request.review"
    GRANT_READ_ANY = "grant.read_any"
    GRANT_REVOKE = "grant.revoke"
    POLICY_APPLY = "policy.apply"
    POLICY_READ = "policy.read"
    POLICY_TEST = "policy.test"
    ACCOUNT_ROTATE = "account.rotate"
    SESSION_READ_ANY = "session.read_any"
    TEMPLATE_MANAGE = "template.manage"
    TEMPLATE_READ = "template.read"


_ALL = frozenset(Role)

GRANTS: dict[Permission, frozenset[Role]] = {
    Permission.USER_CREATE: frozenset({Role.ADMIN}),
    Permission.USER_READ: frozenset({Role.ADMIN, Role.AUDITOR}),
    Permission.TOKEN_CREATE_ANY: frozenset({Role.ADMIN}),
    Permission.TOKEN_READ_ANY: frozenset({Role.ADMIN, Role.AUDITOR}),
    # everyone manages their own SSH keys (like their tokens); admins anyone's
    Permission.SSH_KEY_MANAGE_ANY: frozenset({Role.ADMIN}),
    Permission.SSH_KEY_READ_ANY: frozenset({Role.ADMIN, Role.AUDITOR}),
    Permission.TARGET_CREATE: frozenset({Role.ADMIN}),
    # where a target is, its pinned host key, its admin credential and its policy labels
    Permission.TARGET_UPDATE: frozenset({Role.ADMIN}),
    # requesters must see what they can ask for; no secret is ever part of it
    Permission.TARGET_READ: _ALL,
    Permission.ACCOUNT_CREATE: frozenset({Role.ADMIN}),
    Permission.ACCOUNT_READ: _ALL,
    Permission.KEY_ROTATE: frozenset({Role.ADMIN}),
    Permission.KEY_STATUS: frozenset({Role.ADMIN, Role.AUDITOR}),
    Permission.AUDIT_READ: frozenset({Role.ADMIN, Role.AUDITOR}),
    # auditors watch; they do not take access
    Permission.REQUEST_CREATE: frozenset({Role.REQUESTER, Role.APPROVER, Role.ADMIN}),
    Permission.REQUEST_READ_ANY: frozenset({Role.APPROVER, Role.ADMIN, Role.AUDITOR}),
    # who among these may decide a given request is the request's approver groups' business
    Permission.REQUEST_DECIDE: frozenset({Role.APPROVER, Role.ADMIN}),
    Permission.REQUEST_REVIEW: frozenset({Role.APPROVER, Role.ADMIN, Role.AUDITOR}),
    Permission.GRANT_READ_ANY: frozenset({Role.APPROVER, Role.ADMIN, Role.AUDITOR}),
    Permission.GRANT_REVOKE: frozenset({Role.APPROVER, Role.ADMIN}),
    Permission.POLICY_APPLY: frozenset({Role.ADMIN}),
    Permission.POLICY_READ: _ALL,
    Permission.POLICY_TEST: frozenset({Role.ADMIN, Role.AUDITOR, Role.APPROVER}),
    # security staff rotate and check credentials on demand
    Permission.ACCOUNT_ROTATE: frozenset({Role.ADMIN}),
    # recordings show what people did with their access: auditors' business
    Permission.SESSION_READ_ANY: frozenset({Role.ADMIN, Role.AUDITOR}),
    # templates say which roles an ephemeral account gets: admins' business; everyone may see
    # them, like accounts, to know what to ask for
    Permission.TEMPLATE_MANAGE: frozenset({Role.ADMIN}),
    Permission.TEMPLATE_READ: _ALL,
}


def allowed(principal: Principal, permission: Permission) -> bool:
    return principal.role in GRANTS.get(permission, frozenset())


def authorize(principal: Principal, permission: Permission) -> None:
    """Raise :class:`Forbidden` unless the principal's role holds ``permission``."""
    if not allowed(principal, permission):
        raise Forbidden(
            f"role {principal.role.value!r} may not {permission.value}",
            hint="ask an admin for a role that allows it",
        )


__all__ = ["GRANTS", "Permission", "allowed", "authorize"]

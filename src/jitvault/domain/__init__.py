"""Pure rules of jitvault: entities, validation and ``Sensitive``. No I/O here."""

from jitvault.domain.durations import parse_duration
from jitvault.domain.identity import (
    Principal,
    Role,
    User,
    normalize_username,
    validate_group,
    validate_username,
)
from jitvault.domain.permissions import GRANTS, Permission, allowed, authorize
from jitvault.domain.policy import (
    AccessKind,
    Decision,
    Outcome,
    PolicyDocument,
    RequestFacts,
    Rule,
    evaluate,
)
from jitvault.domain.requests import (
    LIVE_GRANT_STATES,
    AccessRequest,
    Grant,
    RequestState,
    check_can_approve,
    transition,
)
from jitvault.domain.sensitive import REDACTED, Sensitive
from jitvault.domain.targets import (
    MAX_ACCOUNT_NAME_BYTES,
    Account,
    AccountMode,
    AccountStatus,
    SecretKind,
    Target,
    validate_account_name,
    validate_host,
    validate_port,
    validate_target_name,
)

__all__ = [
    "GRANTS",
    "LIVE_GRANT_STATES",
    "MAX_ACCOUNT_NAME_BYTES",
    "REDACTED",
    "AccessKind",
    "AccessRequest",
    "Account",
    "AccountMode",
    "AccountStatus",
    "Decision",
    "Grant",
    "Outcome",
    "Permission",
    "PolicyDocument",
    "Principal",
    "RequestFacts",
    "RequestState",
    "Role",
    "Rule",
    "SecretKind",
    "Sensitive",
    "Target",
    "User",
    "allowed",
    "authorize",
    "check_can_approve",
    "evaluate",
    "normalize_username",
    "parse_duration",
    "transition",
    "validate_account_name",
    "validate_group",
    "validate_host",
    "validate_port",
    "validate_target_name",
    "validate_username",
]

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
from jitvault.domain.sensitive import REDACTED, Sensitive
from jitvault.domain.targets import (
    MAX_ACCOUNT_NAME_BYTES,
    Account,
    AccountMode,
    AccountStatus,
    Target,
    validate_account_name,
    validate_host,
    validate_port,
    validate_target_name,
)

__all__ = [
    "GRANTS",
    "MAX_ACCOUNT_NAME_BYTES",
    "REDACTED",
    "Account",
    "AccountMode",
    "AccountStatus",
    "Permission",
    "Principal",
    "Role",
    "Sensitive",
    "Target",
    "User",
    "allowed",
    "authorize",
    "normalize_username",
    "parse_duration",
    "validate_account_name",
    "validate_group",
    "validate_host",
    "validate_port",
    "validate_target_name",
    "validate_username",
]

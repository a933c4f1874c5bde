"""The exception tree of jitvault. This module imports nothing from the project.

::

    JitvaultError                      every error we raise on purpose
    ├── ConfigError                    bad or missing configuration
    ├── ValidationError                input that breaks a rule (names, durations, ...)
    ├── NotFound                       the thing asked for does not exist
    ├── Conflict                       it exists already, or the state forbids the change
    ├── AuthError                      who you are could not be established
    │   └── LockedOut                  too many failures from this source or for this user
    ├── Forbidden                      you are known but not allowed
    ├── Unavailable                    the service cannot act now (retry later)
    │   ├── Sealed                     the vault is sealed: no credential use
    │   └── AuditUnavailable           the audit log cannot be written: fail closed
    └── CryptoError                    a ciphertext did not decrypt (wrong key, moved, tampered)
        └── KeyProviderError           the root key provider failed (file, Shamir, Transit)

Messages never contain secret values: they say what went wrong and what to do.
"""

from __future__ import annotations


class JitvaultError(Exception):
    """Base of every error jitvault raises on purpose."""

    #: a short machine-readable code, carried to API responses and CLI exit codes
    code = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(JitvaultError):
    code = "config"


class ValidationError(JitvaultError):
    code = "invalid"


class NotFound(JitvaultError):
    code = "not_found"


class Conflict(JitvaultError):
    code = "conflict"


class AuthError(JitvaultError):
    code = "unauthenticated"


class LockedOut(AuthError):
    code = "locked_out"


class Forbidden(JitvaultError):
    code = "forbidden"


class Unavailable(JitvaultError):
    code = "unavailable"


class Sealed(Unavailable):
    code = "sealed"


class AuditUnavailable(Unavailable):
    code = "audit_unavailable"


class CryptoError(JitvaultError):
    code = "crypto"


class KeyProviderError(CryptoError):
    code = "key_provider"


__all__ = [
    "AuditUnavailable",
    "AuthError",
    "ConfigError",
    "Conflict",
    "CryptoError",
    "Forbidden",
    "JitvaultError",
    "KeyProviderError",
    "LockedOut",
    "NotFound",
    "Sealed",
    "Unavailable",
    "ValidationError",
]

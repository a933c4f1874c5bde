"""The vault: initialization, seal state, unsealing, and key rotation.

Unsealed means the keyring (data keys and the audit key) is in memory. Sealed means it is not:
every credential use, and every action that must be audited, answers 503 until it is unsealed.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from jitvault import audit
from jitvault.audit import Action, AuditEvent
from jitvault.config import Settings
from jitvault.crypto import (
    PURPOSE_AUDIT,
    PURPOSE_DATA,
    Keyring,
    KeyringEntry,
    LocalRootKey,
    RootKeyProvider,
    TransitRootKey,
    combine_shares,
    create_key_file,
    load_key_file,
    new_key,
    parse_share,
    split_secret,
    wrap_aad,
)
from jitvault.domain import Sensitive
from jitvault.errors import (
    Conflict,
    CryptoError,
    KeyProviderError,
    Sealed,
    ValidationError,
)
from jitvault.storage import Database, sealed
from jitvault.storage import repositories as repo

log = logging.getLogger(__name__)


class SealState(StrEnum):
    UNINITIALIZED = "uninitialized"
    SEALED = "sealed"
    UNSEALED = "unsealed"


@dataclass
class SealStatus:
    state: SealState
    provider: str
    threshold: int | None = None
    shares: int | None = None
    progress: int = 0
    active_term: int | None = None
    terms: list[int] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "initialized": self.state != SealState.UNINITIALIZED,
            "sealed": self.state != SealState.UNSEALED,
            "state": self.state.value,
            "provider": self.provider,
            "threshold": self.threshold,
            "shares": self.shares,
            "progress": self.progress,
            "active_term": self.active_term,
            "terms": self.terms,
            "error": self.error,
        }


class Vault:
    """Holds the keyring of one node. Thread-safe."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._lock = threading.RLock()
        self._keyring: Keyring | None = None
        self._provider: RootKeyProvider | None = None
        self._shares: list[Sensitive[str]] = []
        self._last_error: str | None = None

    # --- state --------------------------------------------------------------------------------

    @property
    def provider_name(self) -> str:
        return self.settings.keys.provider

    def is_initialized(self) -> bool:
        with self.db.read() as conn:
            return repo.meta_get(conn, "initialized") == "1"

    def status(self) -> SealStatus:
        with self.db.read() as conn:
            initialized = repo.meta_get(conn, "initialized") == "1"
            threshold = repo.meta_get(conn, "shamir_threshold")
            shares = repo.meta_get(conn, "shamir_shares")
        with self._lock:
            kr = self._keyring
            if not initialized:
                state = SealState.UNINITIALIZED
            else:
                state = SealState.UNSEALED if kr is not None else SealState.SEALED
            return SealStatus(
                state=state,
                provider=self.provider_name,
                threshold=int(threshold) if threshold else None,
                shares=int(shares) if shares else None,
                progress=len(self._shares),
                active_term=kr.active_term if kr else None,
                terms=kr.terms if kr else [],
                error=self._last_error,
            )

    @property
    def keyring(self) -> Keyring:
        """The unsealed keyring, or :class:`Sealed` (503)."""
        kr = self._keyring
        if kr is None:
            raise Sealed("the vault is sealed", hint="unseal it: 'jitvault operator unseal'")
        return kr

    @property
    def sealed(self) -> bool:
        return self._keyring is None

    def seal(self) -> None:
        with self._lock:
            self._keyring = None
            self._provider = None
            self._shares = []

    # --- initialization -----------------------------------------------------------------------

    def _make_provider(self, for_init: bool) -> RootKeyProvider:
        keys = self.settings.keys
        if keys.provider == "file":
            path = self.settings.effective_key_file
            if for_init and not path.exists():
                return LocalRootKey(create_key_file(path))
            return LocalRootKey(load_key_file(path))
        if keys.provider == "transit":
            token = _transit_token(self.settings)
            provider = TransitRootKey.connect(
                keys.transit.addr,
                token,
                keys.transit.mount,
                keys.transit.key_name,
                str(keys.transit.ca_cert) if keys.transit.ca_cert else None,
            )
            if for_init:
                provider.ensure_key()
            return provider
        raise KeyProviderError(f"provider {keys.provider!r} has no automatic key source")

    def initialize(
        self, *, shares: int | None = None, threshold: int | None = None
    ) -> list[Sensitive[str]]:
        """Create the keyring and the audit chain. Returns unseal shares (Shamir only).

        The caller then creates the first admin in its own audited transaction.
        """
        with self._lock:
            if self.is_initialized():
                raise Conflict("the vault is already initialized")
            out: list[Sensitive[str]] = []
            if self.provider_name == "shamir":
                shares, threshold = shares or 5, threshold or 3
                root = new_key()
                out = split_secret(root, shares, threshold)
                provider: RootKeyProvider = LocalRootKey(root, name="shamir")
            else:
                if shares or threshold:
                    raise ValidationError(
                        "--shares/--threshold apply only to the shamir key provider"
                    )
                provider = self._make_provider(for_init=True)
            data_key, audit_key = new_key(), new_key()
            with self.db.begin() as conn:
                repo.keyring_add(
                    conn,
                    PURPOSE_DATA,
                    1,
                    provider.name,
                    provider.wrap(data_key, wrap_aad(1, PURPOSE_DATA)),
                    "active",
                )
                repo.keyring_add(
                    conn,
                    PURPOSE_AUDIT,
                    1,
                    provider.name,
                    provider.wrap(audit_key, wrap_aad(1, PURPOSE_AUDIT)),
                    "active",
                )
                repo.meta_set(conn, "key_provider", provider.name)
                if self.provider_name == "shamir":
                    repo.meta_set(conn, "shamir_shares", str(shares))
                    repo.meta_set(conn, "shamir_threshold", str(threshold))
                keyring = Keyring(
                    [
                        KeyringEntry(1, PURPOSE_DATA, data_key),
                        KeyringEntry(1, PURPOSE_AUDIT, audit_key),
                    ]
                )
                audit.init_chain(conn, keyring)
                audit.emit(
                    conn,
                    keyring,
                    AuditEvent(
                        Action.SYSTEM_INIT,
                        actor="system",
                        details={
                            "provider": provider.name,
                            "shares": shares,
                            "threshold": threshold,
                        },
                    ),
                )
                repo.meta_set(conn, "initialized", "1")
            self._keyring, self._provider = keyring, provider
            return out

    # --- unsealing ----------------------------------------------------------------------------

    def _check_provider_matches(self) -> None:
        with self.db.read() as conn:
            stored = repo.meta_get(conn, "key_provider")
        if stored and stored != self.provider_name:
            raise KeyProviderError(
                f"this database was initialized with the {stored!r} key provider, "
                f"but the configuration says {self.provider_name!r}",
                hint="set keys.provider back, or migrate the root key first",
            )

    def _unseal_with(self, provider: RootKeyProvider) -> None:
        with self.db.read() as conn:
            rows = repo.keyring_rows(conn)
        entries = []
        for row in rows:
            try:
                key = provider.unwrap(row.wrapped, wrap_aad(row.term, row.purpose))
            except KeyProviderError:
                raise  # the provider's own diagnosis (Transit unreachable, bad token, ...)
            except CryptoError:
                raise KeyProviderError(
                    "the root key does not open this database's keyring",
                    hint="wrong key file, wrong unseal shares, or wrong Transit key",
                ) from None
            entries.append(KeyringEntry(row.term, row.purpose, key))
        keyring = Keyring(entries)
        with self.db.begin() as conn:
            audit.emit(
                conn,
                keyring,
                AuditEvent(
                    Action.VAULT_UNSEALED,
                    actor="system",
                    details={"provider": provider.name, "node_pid": os.getpid()},
                ),
            )
        self._keyring, self._provider = keyring, provider

    def auto_unseal(self) -> bool:
        """Unseal from the key file or Transit at start. False if it must wait (Shamir)."""
        with self._lock:
            if self._keyring is not None:
                return True
            if not self.is_initialized():
                return False
            self._check_provider_matches()
            if self.provider_name == "shamir":
                return False
            try:
                self._unseal_with(self._make_provider(for_init=False))
            except KeyProviderError as exc:
                self._last_error = str(exc)  # with its hint: seal-status shows what to do
                raise
            self._last_error = None
            return True

    def submit_share(self, share: Sensitive[str]) -> SealStatus:
        """Add one Shamir share; unseal when the threshold is reached."""
        with self._lock:
            if self._keyring is not None:
                return self.status()
            if self.provider_name != "shamir":
                raise Conflict(f"the {self.provider_name} key provider does not take shares")
            if not self.is_initialized():
                raise Conflict("the vault is not initialized", hint="jitvault operator init")
            x, _ = parse_share(share)  # refuses malformed shares before they count
            if any(parse_share(s)[0] == x for s in self._shares):
                raise ValidationError("this unseal share was already given")
            self._shares.append(share)
            with self.db.read() as conn:
                threshold = int(repo.meta_get(conn, "shamir_threshold") or "0")
            if len(self._shares) < threshold:
                return self.status()
            shares, self._shares = self._shares, []
            try:
                root = combine_shares(shares)
                self._unseal_with(LocalRootKey(root, name="shamir"))
            except (KeyProviderError, ValidationError):
                self._last_error = "the unseal shares did not open the vault; start again"
                raise KeyProviderError(
                    "these unseal shares do not open the vault",
                    hint="progress was reset; submit shares of this vault again",
                ) from None
            self._last_error = None
            return self.status()

    # --- rotation -----------------------------------------------------------------------------

    def rotate(self, actor: str, source: str = "") -> int:
        """Add a new data key term and make it active. Re-encryption runs in the background.

        Returns the new term. The caller's audited transaction is this one: the new term and
        its audit event commit together.
        """
        with self._lock:
            keyring, provider = self.keyring, self._provider
            assert provider is not None
            new = new_key()
            with self.db.begin() as conn:
                old = repo.keyring_demote_active(conn, PURPOSE_DATA)
                if old is None:
                    raise CryptoError("no active data key to rotate from")
                all_terms = [r.term for r in repo.keyring_all(conn) if r.purpose == PURPOSE_DATA]
                term = int(max(all_terms)) + 1
                repo.keyring_add(
                    conn,
                    PURPOSE_DATA,
                    term,
                    provider.name,
                    provider.wrap(new, wrap_aad(term, PURPOSE_DATA)),
                    "active",
                )
                remaining = sealed.count_below(conn, term)
                audit.emit(
                    conn,
                    keyring,
                    AuditEvent(
                        Action.KEY_ROTATED,
                        actor=actor,
                        source=source,
                        subject=f"term:{term}",
                        details={"previous_term": old, "to_reencrypt": remaining},
                    ),
                )
            # only once committed: a term the database does not have must never encrypt
            keyring.add(KeyringEntry(term, PURPOSE_DATA, new))
            return term

    def refresh(self) -> None:
        """Load key terms another node added (after a rotation elsewhere)."""
        with self._lock:
            keyring, provider = self.keyring, self._provider
            assert provider is not None
            with self.db.read() as conn:
                rows = repo.keyring_rows(conn)
            known = set(keyring.terms)
            for row in rows:
                if row.purpose == PURPOSE_DATA and row.term not in known:
                    key = provider.unwrap(row.wrapped, wrap_aad(row.term, row.purpose))
                    keyring.add(KeyringEntry(row.term, row.purpose, key))


def _transit_token(settings: Settings) -> Sensitive[str]:
    tf = settings.keys.transit.token_file
    if tf is not None:
        try:
            return Sensitive(tf.read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise KeyProviderError(f"cannot read the Transit token file {tf}") from exc
    token = os.environ.get("JITVAULT_TRANSIT_TOKEN")
    if not token:
        raise KeyProviderError(
            "no Transit token",
            hint="set keys.transit.token_file or the JITVAULT_TRANSIT_TOKEN variable",
        )
    return Sensitive(token)


__all__ = ["SealState", "SealStatus", "Vault"]

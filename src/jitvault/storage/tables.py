"""The schema, as SQLAlchemy Core tables. Alembic migrations create it; keep both in step.

Every encrypted column holds a ``jv1:`` envelope and has a companion ``*_term`` column with the
key term it is sealed under, so re-encryption after a key rotation finds its work by index.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

keyring = Table(
    "keyring",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("purpose", String(16), nullable=False),
    Column("term", Integer, nullable=False),
    Column("provider", String(16), nullable=False),
    # NULL once retired: the key material is destroyed
    Column("wrapped", LargeBinary, nullable=True),
    # active | decrypt_only | retired
    Column("state", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("retired_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("purpose", "term", name="uq_keyring_purpose_term"),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # NFKC + case-folded: the only form compared
    Column("name", String(63), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("groups", Text, nullable=False, default="[]"),
    Column("password_hash", Text, nullable=True),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

# Users' SSH public keys: with a live grant of its owner's, a key logs in to the SSH proxy.
# One key, one person: the fingerprint is unique across all users.
user_ssh_keys = Table(
    "user_ssh_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    Column("algorithm", String(64), nullable=False),
    # "SHA256:" + unpadded base64 of the SHA-256 of the key blob (ssh-keygen -l)
    Column("fingerprint", String(64), nullable=False, unique=True),
    # "<algorithm> <base64 blob>", without the comment
    Column("public_key", Text, nullable=False),
    Column("comment", Text, nullable=False, server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

targets = Table(
    "targets",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(63), nullable=False, unique=True),
    Column("kind", String(32), nullable=False),
    Column("options", Text, nullable=False),
    Column("admin_user", Text, nullable=True),
    Column("admin_secret", Text, nullable=True),
    Column("admin_secret_term", Integer, nullable=True, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("labels", Text, nullable=False, server_default="{}"),
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("target_id", Integer, ForeignKey("targets.id", ondelete="CASCADE"), nullable=False),
    Column("username", Text, nullable=False),
    Column("mode", String(16), nullable=False),
    Column("status", String(16), nullable=False, default="ok"),
    Column("secret", Text, nullable=True),
    Column("secret_term", Integer, nullable=True, index=True),
    Column("secret_updated_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # the secret before the last rotation: reconciliation tries it when nothing else logs in
    Column("previous_secret", Text, nullable=True),
    Column("previous_secret_term", Integer, nullable=True, index=True),
    UniqueConstraint("target_id", "username", name="uq_accounts_target_username"),
)

# The write-ahead journal of a rotation: the new secret is stored (encrypted) here before the
# target is touched, so a crash at any point leaves a secret that reconciliation can try.
rotation_journal = Table(
    "rotation_journal",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "account_id",
        Integer,
        ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
        unique=True,  # at most one rotation of an account in flight
    ),
    Column("pending_secret", Text, nullable=True),
    Column("pending_secret_term", Integer, nullable=True, index=True),
    # journaled | applied
    Column("state", String(16), nullable=False),
    Column("rejections", Integer, nullable=False, default=0),
    Column("reason", Text, nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    ),
    Column("ts", String(40), nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", String(64), nullable=False),
    Column("subject", Text, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("source", Text, nullable=False),
    Column("details", Text, nullable=False),
    Column("prev_mac", String(64), nullable=False),
    Column("mac", String(64), nullable=False),
)

# The chain head, kept apart from the events so that cutting off the tail is detected.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("mac", String(64), nullable=False),
    Column("head_mac", String(64), nullable=False),
)

auth_failures = Table(
    "auth_failures",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("first_at", DateTime(timezone=True), nullable=False),
    Column("locked_until", DateTime(timezone=True), nullable=True),
)


policies = Table(
    "policies",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("document", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("created_by", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

access_requests = Table(
    "access_requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("requester_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("target_id", Integer, ForeignKey("targets.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("name", Text, nullable=False),
    Column("duration_s", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # a pending request lapses at expires_at (the rule's request_ttl)
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("start_at", DateTime(timezone=True), nullable=True),
    Column("break_glass", Boolean, nullable=False, default=False),
    Column("policy_version", Integer, nullable=True),
    Column("rule", Text, nullable=True),
    Column("explanation", Text, nullable=False, default=""),
    Column("required_approvals", Integer, nullable=False, default=0),
    Column("approver_groups", Text, nullable=False, default="[]"),
    Column("max_connections", Integer, nullable=True),
    Column("decided_at", DateTime(timezone=True), nullable=True),
    Column("decided_by", Text, nullable=True),
    Column("decision_note", Text, nullable=True),
    Column("review_required", Boolean, nullable=False, default=False),
    Column("reviewed_by", Text, nullable=True),
    Column("reviewed_at", DateTime(timezone=True), nullable=True),
    # elevation: the requester's own account (a registered account of mode elevation)
    Column("account", Text, nullable=True),
    Column("end_on_disconnect", Boolean, nullable=False, server_default=false()),
    # the deciding rule's checkout option: refuse | queue
    Column("checkout", String(8), nullable=False, server_default="refuse"),
)

approvals = Table(
    "approvals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "request_id",
        Integer,
        ForeignKey("access_requests.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("approver_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("approver", Text, nullable=False),
    Column("comment", Text, nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # an approver counts once, however often they approve
    UniqueConstraint("request_id", "approver_id", name="uq_approvals_request_approver"),
)

# A grant is a lease. It copies what its cleanup needs (user, target id and kind, the account,
# role or template name), so cleanup works whatever the configuration says later.
grants = Table(
    "grants",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "request_id",
        Integer,
        ForeignKey("access_requests.id"),
        nullable=False,
        unique=True,  # one grant per request, however many approvals race
    ),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("user_name", Text, nullable=False),
    Column("target_id", Integer, nullable=False),
    Column("target_name", Text, nullable=False),
    Column("target_kind", String(32), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("name", Text, nullable=False),
    Column("starts_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
    Column("max_connections", Integer, nullable=True),
    Column("break_glass", Boolean, nullable=False, default=False),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    Column("end_reason", Text, nullable=True),
    Column("expiry_warned", Boolean, nullable=False, default=False),
    # --- the lease: what sessions log in as, and what the end of the grant takes back ---
    # the account on the target (shared, the requester's own, or the ephemeral one made here)
    Column("account", Text, nullable=True),
    Column("end_on_disconnect", Boolean, nullable=False, server_default=false()),
    # approved, waiting for its shared account to be checked in
    Column("queued", Boolean, nullable=False, server_default=false()),
    Column("provisioned_at", DateTime(timezone=True), nullable=True),
    # elevation: the role was held before the grant (then the end does not revoke it)
    Column("role_held_before", Boolean, nullable=True),
    # ephemeral: the template as it was when the grant was made (JSON)
    Column("lease_template", Text, nullable=True),
    # ephemeral: the account's secret, generated by the core
    Column("lease_secret", Text, nullable=True),
    Column("lease_secret_term", Integer, nullable=True, index=True),
)

# Exclusive checkout: a shared account is held by at most one live grant. The primary key is
# the whole rule: a second checkout of the account fails on both SQLite and PostgreSQL, however
# many approvals race. The row goes at check-in (after the end-of-grant rotation committed).
account_checkouts = Table(
    "account_checkouts",
    metadata,
    Column(
        "account_id",
        Integer,
        ForeignKey("accounts.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    Column(
        "grant_id",
        Integer,
        ForeignKey("grants.id", ondelete="CASCADE"),
        nullable=False,
        unique=True,
    ),
    Column("since", DateTime(timezone=True), nullable=False),
)

# Ephemeral account templates: which roles (PostgreSQL) or groups (SSH) the account gets, and
# what happens to what it owns when it is dropped.
account_templates = Table(
    "account_templates",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("target_id", Integer, ForeignKey("targets.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(32), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("grant_roles", Text, nullable=False),
    Column("on_drop", String(16), nullable=False),
    Column("reassign_to", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("target_id", "name", name="uq_account_templates_target_name"),
)

# Background jobs (grant cleanup, notifications). Claimed with FOR UPDATE SKIP LOCKED on
# PostgreSQL, so several nodes never run one job twice at once.
jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("payload", Text, nullable=False),
    # queued | running | done | dead | unsupported
    Column("state", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False, default=6),
    Column("run_after", DateTime(timezone=True), nullable=False, index=True),
    Column("locked_by", Text, nullable=True),
    Column("locked_until", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


# Session tokens: what a client presents to a session proxy instead of the vaulted credential.
# Bound to one grant and valid only while it is live; only the SHA-256 of the secret is kept.
session_tokens = Table(
    "session_tokens",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("grant_id", Integer, ForeignKey("grants.id", ondelete="CASCADE"), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    # SCRAM-SHA-256 verifier of the whole token: a proxy can run SCRAM with the token as the
    # password, so that not even the token crosses the wire (a salted hash, like secret_hash)
    Column("scram_verifier", Text, nullable=False),
    Column("single_use", Boolean, nullable=False, default=False),
    Column("used_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Live and past proxy sessions. ended_at is set by whoever ends the session (grant end or
# revoke in the same transaction, or the proxy when the client leaves); the proxy node holding
# the connection cuts it when it sees ended_at.
sessions = Table(
    "sessions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("grant_id", Integer, ForeignKey("grants.id", ondelete="CASCADE"), nullable=False),
    # the session token it was opened with; "" when it was opened with a registered SSH key
    # (then ssh_key_fingerprint says which: the key row may be removed later, this stays)
    Column("token_id", String(16), nullable=False),
    Column("ssh_key_fingerprint", String(64), nullable=True),
    Column("protocol", String(16), nullable=False),
    Column("source", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True), nullable=True, index=True),
    Column("end_reason", Text, nullable=True),
    # while the session is live: the last time the proxy node holding it said it still does
    # (its heartbeat; NULL: not yet, started_at counts). A live session not seen for
    # server.session_lost_seconds is ended by any node's worker: its node stopped or crashed.
    Column("seen_at", DateTime(timezone=True), nullable=True),
    # while the session is live and its proxy has handed the client a cancel key (PostgreSQL's
    # BackendKeyData): the id the client names in a cancel request, and (sealed) the key it
    # must show and where the real backend is, so that any node's proxy can forward it.
    # Cleared with ended_at.
    Column("cancel_id", Integer, nullable=True, index=True, unique=True),
    Column("cancel_key", Text, nullable=True),
    Column("cancel_key_term", Integer, nullable=True, index=True),
)


# What a session did (query texts, commands), encrypted at rest like every secret.
session_events = Table(
    "session_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "session_id",
        Integer,
        ForeignKey("sessions.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("data", Text, nullable=True),
    Column("data_term", Integer, nullable=True, index=True),
)


@dataclass(frozen=True)
class EncryptedColumn:
    """A column holding envelopes, with its key-term companion and the row id column."""

    table: Table
    column: str
    term_column: str
    id_column: str = "id"


TARGET_ADMIN_SECRET = EncryptedColumn(targets, "admin_secret", "admin_secret_term")
ACCOUNT_SECRET = EncryptedColumn(accounts, "secret", "secret_term")
ACCOUNT_PREVIOUS_SECRET = EncryptedColumn(accounts, "previous_secret", "previous_secret_term")
JOURNAL_SECRET = EncryptedColumn(rotation_journal, "pending_secret", "pending_secret_term")
SESSION_EVENT_DATA = EncryptedColumn(session_events, "data", "data_term")
GRANT_LEASE_SECRET = EncryptedColumn(grants, "lease_secret", "lease_secret_term")
SESSION_CANCEL_KEY = EncryptedColumn(sessions, "cancel_key", "cancel_key_term")

#: every column holding envelopes; key rotation re-encrypts exactly these
ENCRYPTED_COLUMNS: tuple[EncryptedColumn, ...] = (
    TARGET_ADMIN_SECRET,
    ACCOUNT_SECRET,
    ACCOUNT_PREVIOUS_SECRET,
    JOURNAL_SECRET,
    SESSION_EVENT_DATA,
    GRANT_LEASE_SECRET,
    SESSION_CANCEL_KEY,
)

__all__ = [
    "ACCOUNT_PREVIOUS_SECRET",
    "ACCOUNT_SECRET",
    "ENCRYPTED_COLUMNS",
    "GRANT_LEASE_SECRET",
    "JOURNAL_SECRET",
    "SESSION_CANCEL_KEY",
    "SESSION_EVENT_DATA",
    "TARGET_ADMIN_SECRET",
    "EncryptedColumn",
    "access_requests",
    "account_checkouts",
    "account_templates",
    "accounts",
    "api_tokens",
    "approvals",
    "audit_events",
    "audit_head",
    "auth_failures",
    "grants",
    "jobs",
    "keyring",
    "meta",
    "metadata",
    "policies",
    "rotation_journal",
    "session_events",
    "session_tokens",
    "sessions",
    "targets",
    "user_ssh_keys",
    "users",
]

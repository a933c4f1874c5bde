"""A node: the settings, database, vault and plugins one jitvault process runs with.

:meth:`Node.write` is the one way services change state: a transaction that needs the vault
unsealed and whose audit event is written in it (fail closed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection

from jitvault import audit
from jitvault.audit import AuditEvent
from jitvault.config import Settings
from jitvault.crypto import Keyring
from jitvault.errors import Unavailable
from jitvault.plugin_api import (
    NotifierRegistry,
    TargetRegistry,
    discover_notifiers,
    discover_targets,
)
from jitvault.services.vault import Vault
from jitvault.storage import Database, sealed, upgrade


@dataclass
class Tx:
    """An open write transaction with the keyring at hand."""

    conn: Connection
    keyring: Keyring

    def emit(self, event: AuditEvent) -> int:
        return audit.emit(self.conn, self.keyring, event)


class Node:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        targets: TargetRegistry,
        notifiers: NotifierRegistry,
    ) -> None:
        self.settings = settings
        self.db = db
        self.vault = Vault(settings, db)
        self.targets = targets
        self.notifiers = notifiers
        #: the time every decision is made at; tests move it instead of sleeping
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    @classmethod
    def open(cls, settings: Settings, *, migrate: bool = True) -> Node:
        """Connect to the database (migrating it to the newest schema) and find plugins."""
        db = Database(settings.effective_database_url)
        if migrate:
            upgrade(db)
        return cls(settings, db, discover_targets(), discover_notifiers())

    @contextmanager
    def write(self) -> Iterator[Tx]:
        """A transaction for an audited change. Sealed: 503 before anything happens."""
        keyring = self.vault.keyring
        try:
            with self.db.begin() as conn:
                yield Tx(conn, keyring)
        except sealed.StaleKeyring:
            self.vault.refresh()
            raise Unavailable(
                "the key was rotated on another node while this change ran",
                hint="retry the command",
            ) from None

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (never write in it: on SQLite it takes no write lock)."""
        with self.db.read() as conn:
            yield conn

    def close(self) -> None:
        self.db.dispose()


__all__ = ["Node", "Tx"]

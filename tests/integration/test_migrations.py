"""The Alembic migrations build exactly the schema the tables declare, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from jitvault.storage import tables as t
from jitvault.storage.db import Database
from jitvault.storage.migrate import upgrade


def test_the_migrations_build_the_schema_the_tables_declare(database_url: str) -> None:
    db = Database(database_url)
    try:
        upgrade(db)
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), t.metadata)
    finally:
        db.dispose()
    assert diff == []

"""Persistence: tables, migrations, repositories. SQLite by default, PostgreSQL by URL."""

from jitvault.storage import repositories, sealed, tables
from jitvault.storage.db import Database, normalize_url
from jitvault.storage.migrate import upgrade

__all__ = ["Database", "normalize_url", "repositories", "sealed", "tables", "upgrade"]

"""Persistence: tables, migrations, repositories. SQLite by default, PostgreSQL by URL.

Statements on the hot paths (what every login and every audit event runs) are built once, at
import, with bind parameters for what varies: SQLAlchemy memoizes a statement's cache key, so
such a call costs a lookup in its compiled cache instead of building the expression and its key
again (that was half of a login's CPU in the store). Elsewhere statements are built where they
run, which reads better.
"""

from jitvault.storage import repositories, sealed, tables
from jitvault.storage.db import Database, normalize_url
from jitvault.storage.migrate import upgrade

__all__ = ["Database", "normalize_url", "repositories", "sealed", "tables", "upgrade"]

"""The worker's re-encryption query reads only what it returns (it runs every pass, over
tables that grow with every recorded statement)."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine

from jitvault.storage import sealed
from jitvault.storage import tables as t
from jitvault.storage.tables import ENCRYPTED_COLUMNS, EncryptedColumn


@pytest.mark.parametrize("col", ENCRYPTED_COLUMNS, ids=lambda c: f"{c.table.name}.{c.column}")
def test_values_under_older_terms_are_found_through_the_term_index_not_a_table_scan(
    col: EncryptedColumn,
) -> None:
    engine = create_engine("sqlite://")
    try:
        t.metadata.create_all(engine)
        statement = sealed.older_values(col, term=2, limit=200)
        compiled = statement.compile(engine)  # bound parameters, as the worker sends them
        params = tuple(compiled.params[name] for name in compiled.positiontup or ())
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params).all()
        plan = " | ".join(str(row[-1]) for row in rows)
    finally:
        engine.dispose()
    assert "USING INDEX" in plan, plan
    assert f"SCAN {col.table.name}" not in plan, plan
    assert "TEMP B-TREE" not in plan, plan

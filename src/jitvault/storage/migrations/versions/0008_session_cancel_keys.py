"""sessions' cancel keys, for a cancel request reaching any node

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 02:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMNs and CREATE INDEXes: no table rebuild on SQLite (rebuilding sessions
    # would cascade-delete its recordings, foreign keys being on)
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cancel_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("cancel_key", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("cancel_key_term", sa.Integer(), nullable=True))
    op.create_index(op.f("ix_sessions_cancel_id"), "sessions", ["cancel_id"], unique=True)
    op.create_index(
        op.f("ix_sessions_cancel_key_term"), "sessions", ["cancel_key_term"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_sessions_cancel_key_term"), table_name="sessions")
    op.drop_index(op.f("ix_sessions_cancel_id"), table_name="sessions")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("cancel_key_term")
        batch_op.drop_column("cancel_key")
        batch_op.drop_column("cancel_id")

"""users' SSH public keys; sessions opened with one

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 15:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_ssh_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("algorithm", sa.String(length=64), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("comment", sa.Text(), server_default="", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_ssh_keys_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_ssh_keys")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_user_ssh_keys_fingerprint")),
    )
    with op.batch_alter_table("user_ssh_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_user_ssh_keys_user_id"), ["user_id"], unique=False)
    # a plain ADD COLUMN (no table rebuild on SQLite: rebuilding sessions would cascade-delete
    # its recordings, foreign keys being on): key sessions keep token_id "" instead of NULL
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ssh_key_fingerprint", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("ssh_key_fingerprint")
    with op.batch_alter_table("user_ssh_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_user_ssh_keys_user_id"))
    op.drop_table("user_ssh_keys")

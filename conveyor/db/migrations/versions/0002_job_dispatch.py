"""jobs.dispatched_at: the outbox mark for brokered executors (Celery)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 10:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import conveyor.db.base

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dispatched_at', conveyor.db.base.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('dispatched_at')

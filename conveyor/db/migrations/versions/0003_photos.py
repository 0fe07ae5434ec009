"""photos pipeline (seed 002): photos and photo_results

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 12:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import conveyor.db.base

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def _json() -> sa.types.TypeEngine:
    # JSON everywhere, JSONB on PostgreSQL (seed 002 asks for JSONB)
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('photos',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('item_id', sa.String(length=36), nullable=False),
    sa.Column('owner_id', sa.String(length=36), nullable=False),
    sa.Column('original_filename', sa.String(length=255), nullable=False),
    sa.Column('storage_key', sa.String(length=500), nullable=False),
    sa.Column('content_type', sa.String(length=100), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('content_sha256', sa.String(length=64), nullable=False),
    sa.Column('width', sa.Integer(), nullable=True),
    sa.Column('height', sa.Integer(), nullable=True),
    sa.Column('canonical_key', sa.String(length=500), nullable=True),
    sa.Column('thumbnail_key', sa.String(length=500), nullable=True),
    sa.Column('phash', sa.String(length=16), nullable=True),
    sa.Column('ai_processing_status', sa.String(length=20), nullable=False),
    sa.Column('ai_results', _json(), nullable=True),
    sa.Column('ai_error_code', sa.String(length=60), nullable=True),
    sa.Column('ai_error_message', sa.Text(), nullable=True),
    sa.Column('ai_provider_used', sa.String(length=60), nullable=True),
    sa.Column('ai_provider_version', sa.String(length=40), nullable=True),
    sa.Column('processed_at', conveyor.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', conveyor.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', conveyor.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['item_id'], ['items.id'], name=op.f('fk_photos_item_id_items'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], name=op.f('fk_photos_owner_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_photos')),
    sa.UniqueConstraint('item_id', name=op.f('uq_photos_item_id'))
    )
    with op.batch_alter_table('photos', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_photos_content_sha256'), ['content_sha256'], unique=False)
        batch_op.create_index(batch_op.f('ix_photos_ai_processing_status'), ['ai_processing_status'], unique=False)
        batch_op.create_index('ix_photos_owner_created', ['owner_id', 'created_at'], unique=False)

    op.create_table('photo_results',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('content_sha256', sa.String(length=64), nullable=False),
    sa.Column('provider', sa.String(length=60), nullable=False),
    sa.Column('provider_version', sa.String(length=40), nullable=False),
    sa.Column('results', _json(), nullable=False),
    sa.Column('model', sa.String(length=120), nullable=True),
    sa.Column('cost', sa.Float(), nullable=False),
    sa.Column('confidence', sa.Float(), nullable=True),
    sa.Column('created_at', conveyor.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_photo_results')),
    sa.UniqueConstraint('content_sha256', 'provider', 'provider_version', name='uq_photo_results_content_provider_version')
    )


def downgrade() -> None:
    op.drop_table('photo_results')
    with op.batch_alter_table('photos', schema=None) as batch_op:
        batch_op.drop_index('ix_photos_owner_created')
        batch_op.drop_index(batch_op.f('ix_photos_ai_processing_status'))
        batch_op.drop_index(batch_op.f('ix_photos_content_sha256'))

    op.drop_table('photos')

"""Alembic environment: runs on the connection handed over by ``conveyor.db.migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

import conveyor.db.all_models  # noqa: F401  (registers every table)
from conveyor.db.base import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
        with engine.begin() as conn:
            context.configure(connection=conn, target_metadata=target_metadata,
                              render_as_batch=True)
            context.run_migrations()
        return
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=True, transactional_ddl=False)
    context.run_migrations()


run_migrations_online()

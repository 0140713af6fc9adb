"""Alembic environment: the URL comes from the Flask app's settings, the tables from feed.schema."""

from __future__ import annotations

import logging
from logging.config import fileConfig

from alembic import context
from flask import current_app

import sagas.schema  # noqa: F401  (registers the saga tables on the same metadata)
from feed.bootstrap import build_engine
from feed.schema import metadata

config = context.config
if config.config_file_name is not None and not logging.getLogger().handlers:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = metadata


def database_url() -> str:
    return current_app.extensions["feed"].settings.database_url


def run_migrations_offline() -> None:
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = build_engine(database_url(), pool_size=1)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_server_default=True,
            # One migration run at a time, even when several processes start together.
            transaction_per_migration=False,
        )
        with context.begin_transaction():
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7215934521)")
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

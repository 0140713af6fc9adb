"""The tables exist only through Alembic: the migrations build exactly what feed.schema says."""

from __future__ import annotations

import uuid

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import create_engine, inspect, text

import sagas.schema  # noqa: F401
from app import create_app
from feed.config import sqlalchemy_url
from feed.schema import metadata
from sagas.bootstrap import build_services
from tests.conftest import SERVER_URL, _database_url, make_settings


def test_the_migrated_database_matches_the_table_definitions(engine):
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_server_default": False})
        diff = compare_metadata(context, metadata)
    assert diff == []


def test_migrations_go_down_and_up_again(app):
    name = f"feed_migrate_{uuid.uuid4().hex[:8]}"
    admin = create_engine(sqlalchemy_url(SERVER_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = _database_url(name)
    migrated = create_app(services=build_services(make_settings(url)))
    try:
        with migrated.app_context():
            upgrade()
            downgrade(revision="base")
            engine = migrated.extensions["feed"].engine
            assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
            upgrade()
            assert {"accounts", "posts", "follows", "votes", "outbox", "idempotency_keys"} <= set(
                inspect(engine).get_table_names()
            )
    finally:
        migrated.extensions["feed"].close()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

"""Migrations are the schema: they run on SQLite and PostgreSQL and match the models."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

import domain.auth.models  # noqa: F401
import domain.files.models  # noqa: F401
import domain.jobs.models  # noqa: F401
from domain.db import Base, make_engine, migrate
from tests.conftest import fresh_postgres_database


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db.sqlite3'}"
        return
    with fresh_postgres_database("tunehouse_migrate") as url:
        yield url


def test_migrations_create_the_schema_the_models_describe(database_url):
    migrate(database_url)
    migrate(database_url)  # idempotent: a second start changes nothing
    engine = make_engine(database_url)
    with engine.connect() as connection:
        assert {"users", "api_keys", "files", "fine_tuning_jobs", "fine_tuning_events", "fine_tuning_checkpoints"} <= set(inspect(connection).get_table_names())
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []

"""Migrations are the schema: they run on SQLite and PostgreSQL and match the models."""

import time

import pytest
import sqlalchemy.exc
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

import domain.auth.models  # noqa: F401
import domain.files.models  # noqa: F401
import domain.jobs.models  # noqa: F401
from domain.auth.models import User
from domain.db import Base, alembic_config, make_engine, make_sessionmaker, migrate
from domain.evaluations.models import Evaluation
from domain.jobs.models import FineTuningJob
from domain.moves.mapping import ORIGIN_CONNECTION, ORIGIN_JOB
from domain.moves.repository import COMPARES_KEY, MoveRepository
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


def test_metadata_stored_with_nul_before_it_was_refused_is_made_readable(database_url):
    """Requests are refused metadata with U+0000 now (domain/metadata.py); a
    row stored before then is cleaned by migration 0012."""
    migrate(database_url)
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    stored = {ORIGIN_CONNECTION: "conn\x00", ORIGIN_JOB: "ftjob-abc", "note\x00": "a\x00b", "plain": "x\\u0000y"}
    with sessions() as session:
        user = User(name="nul", is_admin=False, created_at=int(time.time()))
        session.add(user)
        session.flush()
        session.add(FineTuningJob(
            id="ftjob-nul", owner_id=user.id, model="m", training_file_id="file-x", status="succeeded",
            requested_hyperparameters={}, seed=1, seed_origin="auto", model_deleted=False, result_files=[],
            created_at=int(time.time()), attempt=0, handbacks=0, user_metadata=stored))
        session.add(Evaluation(
            id="eval_nul", owner_id=user.id, file_id="file-x", split="test", models=["m"], max_tokens=8,
            temperature=0.0, metrics=["exact_match"], seed=1, status="succeeded", results={}, items_done=0,
            created_at=int(time.time()), attempt=0, handbacks=0, user_metadata={COMPARES_KEY: "ftjob-nul\x00"}))
        session.commit()
        owner = user.id
    if database_url.startswith("postgresql"):  # what the users of such rows met: an error on every read
        with sessions() as session, pytest.raises(sqlalchemy.exc.DBAPIError, match="UntranslatableCharacter"):
            MoveRepository(session, owner).moved_jobs(after=None, limit=10)

    command.downgrade(alembic_config(database_url), "0011")
    migrate(database_url)

    with sessions() as session:
        moves = MoveRepository(session, owner)
        [job] = moves.moved_jobs(after=None, limit=10)
        # The character is gone; everything else is as stored ("\\u0000" typed as text included).
        assert job.user_metadata == {ORIGIN_CONNECTION: "conn", ORIGIN_JOB: "ftjob-abc", "note": "ab",
                                     "plain": "x\\u0000y"}
        assert [j.id for j in moves.moves_of("conn", "ftjob-abc")] == ["ftjob-nul"]
        assert moves.comparisons(["ftjob-nul"]) == {"ftjob-nul": "eval_nul"}
    engine.dispose()

"""Database engine, sessions and migrations (SQLite embedded, PostgreSQL in production)."""

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

log = logging.getLogger("tunehouse.db")
T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class Base(DeclarativeBase):
    pass


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # The API and the worker are separate processes writing one file: WAL lets
        # readers run beside the writer, busy_timeout makes writers queue, not fail.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    # pre_ping: a connection PostgreSQL dropped (restart, terminated backend) is
    # replaced instead of failing the next request.
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def is_disconnect(exc: BaseException) -> bool:
    """The database could not be reached or dropped the connection (restart,
    terminated backend, network), as opposed to a query that is wrong."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def retry_on_disconnect(session: Session, transaction: Callable[[], T], *, what: str, patience: float = 60.0) -> T:
    """Run `transaction` (a whole unit of work on `session`, commit included)
    and, while the database is unreachable, roll back and run it again for up
    to `patience` seconds. Workers use it for their writes, so a database
    restart pauses a job instead of failing it. `transaction` must be safe to
    repeat: a commit whose acknowledgement was lost may run twice."""
    deadline = time.monotonic() + patience
    delay = 0.25
    while True:
        try:
            return transaction()
        except DBAPIError as exc:
            if not is_disconnect(exc) or time.monotonic() + delay > deadline:
                raise
            try:
                session.rollback()
            except DBAPIError:  # the connection is gone; the session is reset anyway
                pass
            log.warning("database unavailable while %s (%s); retrying in %.2f s", what, type(exc.orig).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def migrate(database_url: str) -> None:
    """Bring the schema to head. Alembic is the only way the schema is made."""
    from alembic import command
    from alembic.config import Config

    if database_url.startswith("sqlite:///"):
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    command.upgrade(config, "head")


"""Database engine, sessions and migrations (SQLite embedded, PostgreSQL in production)."""

import logging
import os
import sqlite3
import threading
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


# Connections beyond `pool_size` for the API's work outside requests (the
# recovery loop, /healthz, /metrics): requests never need them (api/deps.py).
POOL_OVERFLOW = 5


def make_engine(url: str, *, pool_size: int | None = None, timeout: float = 30.0) -> Engine:
    """The engine of one process. `pool_size` (the API's, from
    TUNEHOUSE_DB_POOL_SIZE) keeps that many connections plus POOL_OVERFLOW;
    `timeout` bounds every wait for the database: a connection from the pool
    and, on SQLite, the write lock (then SQLAlchemy's TimeoutError or SQLite's
    "database is locked", which the API answers with a 503). Without
    `pool_size` (workers, CLI) SQLAlchemy's default pool sizes are kept."""
    pool = {} if pool_size is None else {"pool_size": pool_size, "max_overflow": POOL_OVERFLOW}
    if url.startswith("sqlite"):
        # The API and the worker are separate processes writing one file: WAL lets
        # readers run beside the writer, busy_timeout makes writers queue, not fail.
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": timeout}, pool_timeout=timeout, **pool
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            cursor.close()

        _queue_sqlite_writers(engine, timeout)
        return engine
    # pre_ping: a connection PostgreSQL dropped (restart, terminated backend) is
    # replaced instead of failing the next request.
    if pool_size is None:
        pool = {"pool_size": 10, "max_overflow": 10}
    return create_engine(url, pool_pre_ping=True, pool_timeout=timeout, **pool)


_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
_HOLDS_WRITE_LOCK = "tunehouse_sqlite_write_lock"


class _WriteLock:
    """A forked child (Celery's pool) starts with a fresh one: none of its
    parent's connections is in use there."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def acquire(self, timeout: float) -> bool:
        if self._pid != os.getpid():
            self.__init__()
        return self._lock.acquire(timeout=timeout)

    def release(self) -> None:
        if self._pid == os.getpid():
            self._lock.release()


_WRITE_LOCKS: dict[str, _WriteLock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def _queue_sqlite_writers(engine: Engine, timeout: float) -> None:
    """SQLite has one writer at a time. Threads of one process that write at
    once would all wait inside SQLite's busy handler, which polls with sleeps
    of up to 100 ms, so a writer can lose every round until its timeout:
    instead they queue on a lock of this process, taken just before a
    connection's first write (where pysqlite begins the transaction: reads
    take no lock, WAL lets them run beside the writer) and given back when the
    transaction ends. The busy timeout stays for writers of other processes.
    One lock per database file, shared by the process's engines on it."""
    with _WRITE_LOCKS_GUARD:
        lock = _WRITE_LOCKS.setdefault(str(engine.url.database), _WriteLock())

    def release(info: dict | None) -> None:
        if info is not None and info.pop(_HOLDS_WRITE_LOCK, False):
            lock.release()

    @event.listens_for(engine, "before_cursor_execute")
    def _take_write_lock(conn, _cursor, statement, _parameters, _context, _executemany):
        info = conn.info
        if info.get(_HOLDS_WRITE_LOCK):
            if conn.connection.dbapi_connection.in_transaction:
                return
            release(info)  # ended outside SQLAlchemy's commit/rollback
        if not statement.lstrip()[:7].upper().startswith(_WRITES):
            return
        if not lock.acquire(timeout):
            # What SQLite itself says when its busy timeout passes: the API
            # answers it with a 503, workers retry it (retry_on_disconnect).
            raise sqlite3.OperationalError("database is locked")
        info[_HOLDS_WRITE_LOCK] = True

    # commit/rollback fire just before the driver's; a writer let in at that
    # moment waits the last microseconds in SQLite's busy handler.
    @event.listens_for(engine, "commit")
    def _release_on_commit(conn):
        release(conn.info)

    @event.listens_for(engine, "rollback")
    def _release_on_rollback(conn):
        release(conn.info)

    @event.listens_for(engine, "checkin")
    def _release_on_checkin(_dbapi_connection, record):
        release(getattr(record, "info", None))

    @event.listens_for(engine, "invalidate")
    def _release_on_invalidate(_dbapi_connection, record, _exception):
        release(getattr(record, "info", None))


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


def make_sessionmaker(engine: Engine, class_: type[Session] = Session) -> sessionmaker[Session]:
    return sessionmaker(engine, class_=class_, expire_on_commit=False)


def alembic_config(database_url: str):
    """Alembic's configuration for the project's migrations on `database_url`."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    return config


def migrate(database_url: str) -> None:
    """Bring the schema to head. Alembic is the only way the schema is made."""
    from alembic import command

    if database_url.startswith("sqlite:///"):
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(database_url), "head")


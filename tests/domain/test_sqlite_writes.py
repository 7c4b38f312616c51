"""SQLite's single writer (domain/db.py): the threads of one process that write
at once queue for it in order and all get through; a writer held up longer
than the engine's timeout gets SQLite's own "database is locked", quickly."""

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from domain.db import make_engine


@pytest.fixture
def database_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'writes.sqlite3'}"
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE counts (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"))
        connection.execute(text("INSERT INTO counts (id, n) VALUES (1, 0)"))
    engine.dispose()
    return url


def test_concurrent_writers_of_one_process_all_get_through(database_url):
    engine = make_engine(database_url, pool_size=8, timeout=10)
    writers, writes_each = 8, 25

    def write(_):
        for _ in range(writes_each):
            with engine.connect() as connection:
                # A read first, then the write, as the ORM does.
                n = connection.execute(text("SELECT n FROM counts WHERE id = 1")).scalar_one()
                assert n >= 0
                connection.execute(text("UPDATE counts SET n = n + 1 WHERE id = 1"))
                time.sleep(0.001)  # a little work inside the transaction
                connection.commit()

    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(write, range(writers)))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT n FROM counts WHERE id = 1")).scalar_one() == writers * writes_each
    engine.dispose()


def test_the_write_lock_is_given_back_on_rollback_and_on_close(database_url):
    engine = make_engine(database_url, pool_size=2, timeout=1)
    with engine.connect() as connection:
        connection.execute(text("UPDATE counts SET n = 5 WHERE id = 1"))
        connection.rollback()
    with engine.connect() as connection:
        connection.execute(text("UPDATE counts SET n = 6 WHERE id = 1"))
        # closed without commit: rolled back, lock given back
    with engine.begin() as connection:
        connection.execute(text("UPDATE counts SET n = 7 WHERE id = 1"))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT n FROM counts WHERE id = 1")).scalar_one() == 7
    engine.dispose()


def test_a_writer_held_up_past_the_timeout_gets_database_is_locked(database_url):
    engine = make_engine(database_url, pool_size=2, timeout=0.3)
    holding = engine.connect()
    holding.execute(text("UPDATE counts SET n = 1 WHERE id = 1"))  # holds the write lock
    try:
        began = time.monotonic()
        with engine.connect() as connection:
            # Reads go on beside the writer.
            assert connection.execute(text("SELECT n FROM counts WHERE id = 1")).scalar_one() == 0
            with pytest.raises(OperationalError, match="database is locked"):
                connection.execute(text("UPDATE counts SET n = 2 WHERE id = 1"))
        assert time.monotonic() - began < 5
    finally:
        holding.commit()
        holding.close()
    with engine.begin() as connection:  # free again
        connection.execute(text("UPDATE counts SET n = 3 WHERE id = 1"))
    engine.dispose()


def test_a_writer_of_another_process_is_waited_for_then_refused(database_url):
    """Another process's writer is seen through SQLite's busy timeout: the
    same timeout, the same error."""
    engine = make_engine(database_url, pool_size=2, timeout=0.3)
    other = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        began = time.monotonic()
        with engine.connect() as connection, pytest.raises(OperationalError, match="database is locked"):
            connection.execute(text("UPDATE counts SET n = 2 WHERE id = 1"))
        assert 0.2 < time.monotonic() - began < 5
    finally:
        other.rollback()
        other.close()
    # Our lock was given back with the failed transaction.
    done = threading.Event()

    def write():
        with engine.begin() as connection:
            connection.execute(text("UPDATE counts SET n = 4 WHERE id = 1"))
        done.set()

    threading.Thread(target=write).start()
    assert done.wait(5)
    engine.dispose()

"""The receiver's SQLite log copies (receiver.wal): off the group commit, and the log still starts over."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest
from loguru import logger

from pipeline.db import make_engine
from pipeline.schema import upgrade
from pipeline.sections import DatabaseConfig
from receiver.app import create_app, make_receiver_engine
from receiver.spool import Spool
from receiver.wal import WalCheckpointer
from receiver.writer import GroupCommitWriter
from tests.test_receiver_writer import _row


def _engine(tmp_path, autocheckpoint=False):
    engine = make_engine(DatabaseConfig(url=f"sqlite:///{tmp_path / 'wal.db'}"), sqlite_autocheckpoint=autocheckpoint)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # the table itself is in the database file
    return engine


@pytest.fixture
def engine(tmp_path):
    engine = _engine(tmp_path)
    yield engine
    engine.dispose()


def _commit_rows(engine, commits: int, rows: int = 20) -> None:
    connection = engine.raw_connection()
    try:
        for _ in range(commits):
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany("INSERT INTO t (body) VALUES (?)", [(b"x" * 3000,)] * rows)
            connection.execute("COMMIT")
    finally:
        connection.close()


def _log_bytes(path) -> int:
    """The -wal file's size: SQLite writes a restarted log from the file's start and never shrinks the
    file here, so the size is the longest the log has been."""
    return (path.parent / (path.name + "-wal")).stat().st_size


def _rows_in_database_file(path, table: str = "t") -> int:
    """Rows the database file itself holds, ignoring the log (immutable=1 never reads the -wal file)."""
    connection = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        connection.close()


def _autocheckpoint(engine) -> int:
    with engine.connect() as connection:
        return connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()


def test_the_receiver_engine_copies_no_log_inside_a_commit(tmp_path):
    config = DatabaseConfig(url=f"sqlite:///{tmp_path / 'a.db'}")
    receiver_engine, other_engine = make_receiver_engine(config), make_engine(config)
    try:
        assert _autocheckpoint(receiver_engine) == 0
        assert _autocheckpoint(other_engine) == 1000  # every other job keeps SQLite's default
    finally:
        receiver_engine.dispose()
        other_engine.dispose()


def test_without_autocheckpoint_a_commit_leaves_the_log_uncopied(engine, tmp_path):
    """What the checkpointer is for: with autocheckpoint off, nothing reaches the database file by itself."""
    _commit_rows(engine, 40)
    assert _rows_in_database_file(tmp_path / "wal.db") == 0
    assert _log_bytes(tmp_path / "wal.db") > 40 * 20 * 3000


def test_a_round_copies_the_log_and_the_writers_catch_up_starts_it_over(engine, tmp_path):
    checkpointer = WalCheckpointer(engine, restart_frames=20)
    path = tmp_path / "wal.db"
    writer = engine.raw_connection()
    try:
        _commit_rows(engine, 40)
        writer.execute("BEGIN IMMEDIATE")  # the writer is inside its next group while the round copies
        writer.executemany("INSERT INTO t (body) VALUES (?)", [(b"y" * 3000,)] * 20)
        log, copied = checkpointer.checkpoint()
        assert log >= 40 and copied == log
        assert _rows_in_database_file(path) == 40 * 20
        assert checkpointer.due
        writer.execute("COMMIT")
        grown = _log_bytes(path)

        _commit_rows(engine, 1)  # begins on a log not all copied: appended after the old frames
        assert _log_bytes(path) > grown

        checkpointer.catch_up()  # between two groups: copies the rest
        assert not checkpointer.due and checkpointer.catch_ups == 1
        longest = _log_bytes(path)
        _commit_rows(engine, 3)  # begins on a fully copied log: SQLite writes it from the start
        assert _log_bytes(path) == longest
        assert _rows_in_database_file(path) == 42 * 20
    finally:
        writer.close()


def test_past_the_cap_a_round_holds_writers_back_until_the_log_can_start_over(engine, tmp_path):
    """Another process's writer inside a transaction while the round copies: a passive copy leaves the
    log growing (previous test); past cap_frames the round waits for that transaction and copies all,
    so the next commit starts the log over with no catch-up."""
    checkpointer = WalCheckpointer(engine, restart_frames=10**9, cap_frames=20)
    path = tmp_path / "wal.db"
    other_writer = engine.raw_connection()
    try:
        _commit_rows(engine, 40)
        other_writer.execute("BEGIN IMMEDIATE")
        other_writer.executemany("INSERT INTO t (body) VALUES (?)", [(b"y" * 3000,)] * 20)
        committer = threading.Timer(0.1, lambda: other_writer.execute("COMMIT"))  # within RESTART_WAIT_MS
        committer.start()
        log, copied = checkpointer.checkpoint()
        committer.join()
        assert checkpointer.restarts == 1 and not checkpointer.due
        assert copied == log and _rows_in_database_file(path) == 41 * 20  # the other writer's rows included
        longest = _log_bytes(path)
        _commit_rows(engine, 3)
        assert _log_bytes(path) == longest
    finally:
        other_writer.close()


def test_a_reader_left_in_the_log_holds_a_restart_back_only_briefly(engine, tmp_path):
    """A RESTART waits for readers too. One that stays (a long report) must not hold the writers back for
    the connection's busy timeout (10 s) at every round: the RESTART gives up after RESTART_WAIT_MS and
    is not tried again for a while; the pooled connection gets its busy timeout back."""
    checkpointer = WalCheckpointer(engine, restart_frames=10**9, cap_frames=20)
    reader = sqlite3.connect(tmp_path / "wal.db", isolation_level=None)
    try:
        _commit_rows(engine, 10)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM t").fetchone()  # a snapshot that needs the log's frames
        _commit_rows(engine, 30)
        started = time.monotonic()
        log, copied = checkpointer.checkpoint()
        checkpointer.checkpoint()  # within the back-off: no second RESTART
        held = time.monotonic() - started
        assert held < 5  # the default busy timeout is 10 s per RESTART
        assert checkpointer.restarts == 0 and checkpointer.restarts_given_up == 1 and copied < log
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    finally:
        reader.close()


def test_a_short_log_is_not_due(engine, tmp_path):
    checkpointer = WalCheckpointer(engine, restart_frames=10_000)
    _commit_rows(engine, 5)
    log, copied = checkpointer.checkpoint()
    assert 0 < log < 10_000 and copied == log
    assert not checkpointer.due


def test_the_writer_never_waits_for_a_round(engine, tmp_path):
    """A catch-up while a round holds the copy returns at once and stays due for the next group."""
    checkpointer = WalCheckpointer(engine, restart_frames=1)
    _commit_rows(engine, 3)
    checkpointer.checkpoint()
    assert checkpointer.due
    holding, release = threading.Event(), threading.Event()

    def round_in_progress():
        with checkpointer._copying:
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=round_in_progress)
    thread.start()
    try:
        assert holding.wait(10)
        checkpointer.catch_up()
        assert checkpointer.due and checkpointer.catch_ups == 0
    finally:
        release.set()
        thread.join(10)
    checkpointer.catch_up()
    assert not checkpointer.due and checkpointer.catch_ups == 1


def test_a_failing_copy_is_logged_not_raised(tmp_path):
    path = tmp_path / "not-a-database.db"
    path.write_bytes(b"this is not an SQLite database file, whatever its name says" * 100)
    engine = make_engine(DatabaseConfig(url=f"sqlite:///{path}"), sqlite_autocheckpoint=False)
    messages: list[str] = []
    sink = logger.add(lambda message: messages.append(str(message)), level="WARNING")
    checkpointer = WalCheckpointer(engine, interval_seconds=0.01)
    try:
        checkpointer.catch_up()  # on the writer's thread: must never raise
        checkpointer.start()
        checkpointer.stop()
        assert checkpointer.failures >= 2
        assert len([m for m in messages if "SQLite WAL checkpoint failed" in m]) == 1  # one warning a minute
    finally:
        logger.remove(sink)
        engine.dispose()


def _largest_log_under_the_writer(
    directory, checkpointer_options: dict | None
) -> tuple[int, GroupCommitWriter, WalCheckpointer | None]:
    """480 callbacks through the real group-commit writer, in waves of 8: (longest log in bytes, writer, checkpointer)."""
    directory.mkdir()
    engine = make_receiver_engine(DatabaseConfig(url=f"sqlite:///{directory / 'wal.db'}"))
    upgrade(engine)
    checkpointer = WalCheckpointer(engine, **checkpointer_options) if checkpointer_options is not None else None
    writer = GroupCommitWriter(engine, Spool(directory / "spool"), max_batch=8, checkpointer=checkpointer)

    async def scenario():
        for wave in range(60):
            await asyncio.gather(*(writer.submit(*_row(wave * 8 + n)) for n in range(8)))
            await asyncio.sleep(0.005)

    writer.start()
    try:
        asyncio.run(scenario())
        largest_log = _log_bytes(directory / "wal.db")  # before the last connection closes (that removes the file)
    finally:
        writer.stop()
        engine.dispose()
    return largest_log, writer, checkpointer


def test_the_group_commit_writer_keeps_the_log_short(tmp_path):
    """Through the real writer: rows keep arriving while the checkpointer copies; the log starts over
    again and again instead of growing as it does with nobody copying."""
    unbounded, _, _ = _largest_log_under_the_writer(tmp_path / "nobody-copies", None)
    largest, writer, checkpointer = _largest_log_under_the_writer(
        tmp_path / "checkpointer", {"interval_seconds": 0.02, "restart_frames": 30}
    )
    assert writer.rows_committed == 480
    assert checkpointer.catch_ups >= 2
    assert largest < unbounded / 3


def test_a_stopped_writer_leaves_every_row_in_the_database_file(tmp_path):
    """The checkpointer's last round runs at stop, before the engine closes (closing would copy too)."""
    engine = make_receiver_engine(DatabaseConfig(url=f"sqlite:///{tmp_path / 'wal.db'}"))
    upgrade(engine)
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # the schema itself is in the database file
    checkpointer = WalCheckpointer(engine, interval_seconds=3600)  # no round but the last one
    writer = GroupCommitWriter(engine, Spool(tmp_path / "spool"), checkpointer=checkpointer)

    async def scenario():
        await asyncio.gather(*(writer.submit(*_row(n)) for n in range(10)))

    writer.start()
    try:
        asyncio.run(scenario())
        assert _rows_in_database_file(tmp_path / "wal.db", "payment_events") == 0  # all in the log so far
        writer.stop()
        assert checkpointer.rounds == 1
        assert _rows_in_database_file(tmp_path / "wal.db", "payment_events") == 10
    finally:
        writer.stop()
        engine.dispose()


def test_the_app_copies_the_log_on_sqlite_only(backend):
    app = create_app(backend.config(), engine=backend.engine)
    if backend.name == "sqlite":
        assert isinstance(app.state.checkpointer, WalCheckpointer)
        assert app.state.writer.checkpointer is app.state.checkpointer
    else:
        assert app.state.checkpointer is None and app.state.writer.checkpointer is None

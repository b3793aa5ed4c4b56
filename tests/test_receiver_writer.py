"""Group commit: many rows, one transaction; an answer only after the commit; one bad row spoils nothing."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

from sqlalchemy import event

from pipeline.events import extract_fields
from pipeline.store.events import Claim, event_row
from receiver import writer as outcomes
from receiver.spool import Spool
from receiver.writer import GroupCommitWriter
from tests.conftest import fixture_bytes
from tests.servers import add_donation, event_rows

GUIDE_REF = "RHCI-DN-999-20251219120000"


def _row(n: int, body: bytes | None = None):
    raw = body or fixture_bytes("callback_guide_example.json").replace(b"TEST123", b"TX%05d" % n)
    fields = extract_fields(raw)
    row = event_row(
        source="callback",
        body=raw,
        received_at=datetime.now(UTC),
        auth="n/a",
        fields=fields,
        content_type="application/json",
    )
    return row, Claim.of(fields)


def _count_commits(engine) -> list:
    commits = []
    event.listen(engine, "commit", lambda connection: commits.append(1))
    return commits


def _queued_then_started(writer: GroupCommitWriter, rows) -> list[str]:
    """Submit every row before the writer thread starts, so they wait in one queue; then start it and
    return the outcomes. The writer is stopped in every case."""

    async def scenario():
        tasks = [asyncio.ensure_future(writer.submit(row, keys)) for row, keys in rows]
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in tasks)  # nothing is answered before the writer commits
        writer.start()
        return [r.outcome for r in await asyncio.wait_for(asyncio.gather(*tasks), 30)]

    try:
        return asyncio.run(scenario())
    finally:
        writer.stop()


def test_queued_rows_share_one_transaction(backend):
    add_donation(backend.engine, GUIDE_REF)
    writer = GroupCommitWriter(backend.engine, Spool(backend.tmp_path / "spool"), max_batch=256)
    commits = _count_commits(backend.engine)

    unknown = _row(99, b'{"transactionstatus":"success","utilityref":"RHCI-DN-1-nope"}')
    results = _queued_then_started(writer, [_row(n) for n in range(10)] + [unknown])
    assert results == [outcomes.KNOWN] * 10 + [outcomes.UNKNOWN]
    assert len(commits) == 1 and writer.batches == 1 and writer.largest_batch == 11
    assert len(event_rows(backend.engine)) == 11


def test_max_batch_is_respected(backend):
    writer = GroupCommitWriter(backend.engine, Spool(backend.tmp_path / "spool"), max_batch=4)

    results = _queued_then_started(writer, [_row(n) for n in range(10)])
    assert results == [outcomes.UNKNOWN] * 10
    assert writer.batches == 3 and writer.largest_batch == 4
    assert len(event_rows(backend.engine)) == 10


def test_answer_only_after_commit(sqlite_backend):
    """While another connection holds SQLite's write lock, the request is not answered; it is once the lock goes."""
    backend = sqlite_backend
    writer = GroupCommitWriter(backend.engine, Spool(backend.tmp_path / "spool"))
    blocker = backend.engine.raw_connection()
    blocker.driver_connection.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    async def scenario():
        writer.start()
        task = asyncio.ensure_future(writer.submit(*_row(1)))
        await asyncio.sleep(0.5)
        assert not task.done()
        assert event_rows(backend.engine) == []  # readers see nothing committed
        blocker.driver_connection.execute("ROLLBACK")
        released.set()
        return (await asyncio.wait_for(task, 15)).outcome

    try:
        assert asyncio.run(scenario()) == outcomes.UNKNOWN
    finally:
        if not released.is_set():
            blocker.driver_connection.execute("ROLLBACK")
        blocker.close()
        writer.stop()
    assert len(event_rows(backend.engine)) == 1


def test_one_bad_row_does_not_fail_its_batch(backend):
    writer = GroupCommitWriter(backend.engine, Spool(backend.tmp_path / "spool"))
    good_a, good_b = _row(1), _row(2)
    bad_row, bad_keys = _row(3)
    bad_row = {**bad_row, "auth": None}  # NOT NULL violation: a StoreError, not an outage

    results = _queued_then_started(writer, [good_a, (bad_row, bad_keys), good_b])
    assert results == [outcomes.UNKNOWN, outcomes.SPOOLED, outcomes.UNKNOWN]
    assert len(event_rows(backend.engine)) == 2
    assert writer.rows_spooled == 1


def test_a_value_the_log_cannot_store_spools_only_its_own_row(backend):
    """The raw append converts values itself; its conversion errors must still be StoreErrors, so the
    group is retried row by row (a bare TypeError would spool every neighbour)."""
    writer = GroupCommitWriter(backend.engine, Spool(backend.tmp_path / "spool"))
    good_a, good_b = _row(1), _row(2)
    float_row, float_keys = _row(3)
    naive_row, naive_keys = _row(4)
    float_row = {**float_row, "amount": 1.5}  # money must be Decimal
    naive_row = {**naive_row, "received_at": datetime(2026, 1, 1)}  # and times aware

    results = _queued_then_started(writer, [good_a, (float_row, float_keys), (naive_row, naive_keys), good_b])
    assert results == [outcomes.UNKNOWN, outcomes.SPOOLED, outcomes.SPOOLED, outcomes.UNKNOWN]
    assert len(event_rows(backend.engine)) == 2
    assert writer.rows_spooled == 2


def test_submit_after_stop_is_still_stored(backend):
    writer = GroupCommitWriter(backend.engine, Spool(backend.tmp_path / "spool"))
    writer.start()
    writer.stop()
    assert asyncio.run(writer.submit(*_row(1))).outcome == outcomes.UNKNOWN
    assert len(event_rows(backend.engine)) == 1


def test_outage_spools_every_row_of_the_batch(tmp_path):
    from pipeline.db import make_engine
    from pipeline.sections import DatabaseConfig

    engine = make_engine(DatabaseConfig(url=f"sqlite:///{tmp_path / 'missing' / 'x.db'}"))
    spool = Spool(tmp_path / "spool")
    writer = GroupCommitWriter(engine, spool)

    try:
        assert _queued_then_started(writer, [_row(n) for n in range(5)]) == [outcomes.SPOOLED] * 5
    finally:
        spool.close()
    assert len(spool.path.read_bytes().splitlines()) == 5


def test_a_commit_that_raised_after_it_happened_is_not_appended_twice(backend, monkeypatch):
    """The row-by-row retry after a failed batch must not duplicate rows whose COMMIT did happen
    (the error came back, e.g. from the network, after the server had committed)."""
    import contextlib

    import receiver.writer as writer_module
    from pipeline.db import transaction as real_transaction
    from pipeline.errors import StoreError

    calls = {"n": 0}

    @contextlib.contextmanager
    def commit_then_fail(engine, **kwargs):
        with real_transaction(engine, **kwargs) as session:
            yield session
        calls["n"] += 1
        if calls["n"] == 1:
            raise StoreError("database error: lost the answer to COMMIT")

    monkeypatch.setattr(writer_module, "transaction", commit_then_fail)
    writer = GroupCommitWriter(backend.engine, Spool(backend.tmp_path / "spool"), max_batch=256)

    results = _queued_then_started(writer, [_row(n) for n in range(5)])
    assert results == [outcomes.UNKNOWN] * 5  # stored (no such donation) and answered
    assert len(event_rows(backend.engine)) == 5  # not 10


def test_a_failed_commit_never_answers_known_even_if_spooling_breaks(backend, monkeypatch):
    """The donation lookup runs inside the transaction; if its COMMIT fails and the spool path then breaks
    too, the request must be answered as failed, never with the lookup's "known" (a 200 for nothing stored)."""
    import contextlib

    import receiver.writer as writer_module
    from pipeline.db import transaction as real_transaction
    from pipeline.errors import StoreUnavailable

    donation_id = add_donation(backend.engine, GUIDE_REF)
    assert donation_id

    @contextlib.contextmanager
    def lookup_then_fail(engine, **kwargs):
        with real_transaction(engine, **kwargs) as session:
            yield session
            raise StoreUnavailable("database unreachable: gone before COMMIT")

    def broken_spool(self, batch, reason):
        raise RuntimeError("spool bug")

    monkeypatch.setattr(writer_module, "transaction", lookup_then_fail)
    monkeypatch.setattr(GroupCommitWriter, "_spool", broken_spool)
    writer = GroupCommitWriter(backend.engine, Spool(backend.tmp_path / "spool"))
    [result] = _queued_then_started(writer, [_row(1)])
    assert result == outcomes.FAILED
    assert event_rows(backend.engine) == []

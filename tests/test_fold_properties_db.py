"""Properties of the fold on a real SQLite database (docs/fold.md), with Hypothesis.

Folding a log incrementally, split at random points (small batches, max_batches, events committed out of
id order, donations that appear after the events naming them), gives exactly the state a single rebuild
gives; the invariants hold after every fold. The pure properties: test_fold_properties.py.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert

from jobs.fold import run_fold
from jobs.rebuild import check, rebuild
from pipeline.config import Config, load_config
from pipeline.db import make_engine, transaction
from pipeline.events import EventFields, extract_fields
from pipeline.models import PaymentEvent
from pipeline.schema import upgrade
from pipeline.snapshot import differences
from pipeline.store.events import event_row
from pipeline.store.snapshot import live_snapshot
from pipeline.store.state import SqlFoldStore
from tests.builders import add_donation, add_patient, callback_body

T0 = datetime(2026, 1, 14, 9, 30, 0, tzinfo=UTC)


# -- 2. real database: incremental folds == one rebuild ---------------------------------------------

DB_KINDS = (
    "cb_success",
    "cb_success",
    "cb_mismatch",
    "cb_failure",
    "cb_cancelled",
    "cb_unknown_status",
    "cb_untrusted_success",
    "cb_unknown_reference",
    "cb_invalid",
    "poll_success",
    "poll_failed",
    "poll_expired",
    "poll_pending",
    "op_completed",
    "op_failed",
)
AMOUNTS = ("10000.00", "25000.00")


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(Config().database.model_copy(update={"url": f"sqlite:///{path}"}))
    upgrade(engine)
    engine.dispose()
    return path


class Log:
    """Appends events with explicit ids, so a test can leave an id missing and commit it later."""

    def __init__(self, engine):
        self.engine = engine
        self.next_id = 1

    def reserve(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def write(
        self,
        event_id: int,
        *,
        source: str,
        body: bytes,
        received_at: datetime,
        auth: str = "n/a",
        donation_id=None,
        status=None,
    ) -> None:
        fields = (
            extract_fields(body) if source in ("callback", "import") else EventFields(status=status, status_raw=status)
        )
        row = event_row(
            source=source, body=body, received_at=received_at, auth=auth, fields=fields, donation_id=donation_id
        )
        with transaction(self.engine) as session:
            session.execute(insert(PaymentEvent).values(id=event_id, **row))


donation_spec = st.tuples(st.sampled_from([0, 1, None]), st.sampled_from(AMOUNTS), st.booleans(), st.booleans())
db_step = st.one_of(
    st.tuples(st.just("event"), st.integers(0, 3), st.sampled_from(DB_KINDS), st.integers(0, 900)),
    st.tuples(st.just("reserve"), st.integers(0, 3), st.sampled_from(DB_KINDS), st.integers(0, 900)),
    st.tuples(st.just("fill"), st.integers(0, 5)),
    st.tuples(st.just("create")),
    st.tuples(st.just("fold"), st.integers(1, 4), st.one_of(st.none(), st.integers(1, 3))),
)


@settings(
    max_examples=100,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],  # no slow "explain" phase
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    donations=st.lists(donation_spec, min_size=1, max_size=4),
    steps=st.lists(db_step, min_size=1, max_size=28),
    credential=st.booleans(),
)
def test_incremental_folds_at_random_points_equal_one_rebuild(
    template_db, tmp_path_factory, donations, steps, credential
):
    directory = tmp_path_factory.mktemp("prop")
    path = directory / "fold.db"
    shutil.copy(template_db, path)
    url = f"sqlite:///{path}"
    overrides = {"database.url": url, "database.sqlite_synchronous": "NORMAL", "logging.dir": str(directory / "logs")}
    if credential:
        overrides["webhook.password"] = "pw-for-the-property"
    config = _config(directory, overrides)
    engine = make_engine(config.database)
    try:
        _run_scenario(engine, config, donations, steps)
    finally:
        engine.dispose()


def _config(directory: Path, overrides: dict) -> Config:
    path = directory / "config.yaml"
    path.write_text("{}\n")
    return load_config(path, environ={}, overrides=overrides)


def _run_scenario(engine, config, donations, steps) -> None:
    log = Log(engine)
    patients = [add_patient(engine, T0, required="30000"), add_patient(engine, T0, required="45000")]
    # (patient index, amount, with a support share, appears late); transaction ids known up front
    made: dict[int, tuple[int, str]] = {}
    transaction_ids = {index: f"tx-{index}-prop" for index in range(len(donations))}
    late = [index for index, spec in enumerate(donations) if spec[3]]

    def create(index: int) -> None:
        patient, amount, share, _ = donations[index]
        patient_id = None if patient is None else patients[patient]
        patient_amount = str(Decimal(amount) - Decimal("2500")) if share else None
        made[index] = add_donation(
            engine,
            T0,
            patient_id=patient_id,
            amount=amount,
            transaction_id=transaction_ids[index],
            patient_amount=patient_amount,
        )

    for index in range(len(donations)):
        if index not in late:
            create(index)

    def write(event_id: int, index: int, kind: str, seconds: int) -> None:
        index %= len(donations)
        at = T0 + timedelta(seconds=seconds)
        amount = donations[index][1]
        source, _, what = kind.partition("_")
        if source == "cb" or index not in made:
            if source != "cb":  # poll/operator events name an existing donation; before it exists only callbacks come
                what = {"success": "success", "completed": "success"}.get(what, "failure")
            reference = (
                made[index][1] if index in made else "RHCI-DN-0-20000101000000"
            )  # unknown: resolves by transaction id
            transaction_id = transaction_ids[index]
            auth = "verified"
            status, pay = "success", amount
            if what == "mismatch":
                pay = str(Decimal(amount) + 1)
            elif what == "failure":
                status = "failure"
            elif what == "cancelled":
                status = "cancelled"
            elif what == "unknown_status":
                status = "processing"
            elif what == "untrusted_success":
                auth = "failed"
            elif what == "unknown_reference":
                reference, transaction_id = "RHCI-DN-777-20000101000000", "tx-nobody"
            if what == "invalid":
                body = b'{"transactionstatus": '
            else:
                body = callback_body(reference, status=status, amount=pay, transaction_id=transaction_id)
            log.write(event_id, source="callback", body=body, received_at=at, auth=auth)
            return
        status = {
            "success": "SUCCESS",
            "failed": "FAILED",
            "expired": "EXPIRED",
            "pending": "PENDING",
            "completed": "COMPLETED",
        }[what]
        log.write(
            event_id,
            source="operator" if source == "op" else "poll",
            body=b"{}",
            received_at=at,
            donation_id=made[index][0],
            status=status,
        )

    pending: list[tuple[int, int, str, int]] = []
    clock = T0 + timedelta(hours=1)
    folded_ids = 0
    for number, step in enumerate(steps):
        now = clock + timedelta(seconds=number)
        if step[0] == "event":
            write(log.reserve(), *step[1:])
        elif step[0] == "reserve":
            pending.append((log.reserve(), *step[1:]))
        elif step[0] == "fill" and pending:
            filled = pending.pop(step[1] % len(pending))
            if filled[0] < folded_ids:
                event("an event committed below the fold position")
            write(*filled)
        elif step[0] == "create" and late:
            if folded_ids:
                event("a donation appeared after a fold")
            create(late.pop(0))
        elif step[0] == "fold":
            folded_ids = run_fold(engine, config, now, batch_size=step[1], max_batches=step[2], announce=False).position
            _assert_invariants(engine)
    for reserved in pending:
        write(*reserved)
    for index in late:
        create(index)
    now = clock + timedelta(seconds=len(steps) + 1)
    report = run_fold(engine, config, now, batch_size=3, announce=False)
    assert report.gaps_waiting == 0
    _assert_invariants(engine)

    result = check(engine, config)
    assert result.differences == []
    assert result.position == log.next_id - 1
    with transaction(engine) as session:
        incremental = live_snapshot(session)
        assert SqlFoldStore(session).read_checkpoint("main").events_applied == log.next_id - 1
    rebuild(engine, config, now)
    with transaction(engine) as session:
        rebuilt = live_snapshot(session)
    for status in sorted({values[0] for values in rebuilt.donations.values()}):
        event(f"final status {status}")
    assert differences(incremental, rebuilt) == []
    assert incremental == rebuilt
    _assert_invariants(engine)


def _assert_invariants(engine) -> None:
    with transaction(engine) as session:
        assert SqlFoldStore(session).invariant_violations() == []

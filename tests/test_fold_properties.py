"""Properties of the fold (DESIGN §4).

1. Pure: a donation's final status, credit and completed_at do not depend on the order its events are
   applied in, nor on any event being applied more than once.
2. Real SQLite database: folding a log incrementally, split at random points (small batches, max_batches,
   events committed out of id order, donations that appear after the events naming them), gives exactly
   the state a single rebuild gives; the invariants hold after every fold.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert

from jobs.fold import _resolve_all, run_fold
from jobs.rebuild import check, rebuild
from pipeline.config import Config, load_config
from pipeline.db import make_engine, transaction
from pipeline.events import EventFields, extract_fields
from pipeline.fold import (
    COMPLETED,
    Credit,
    DonationState,
    FoldEvent,
    TrustPolicy,
    credit_of,
    fold_donation,
    patient_totals,
    patient_update,
)
from pipeline.models import PaymentEvent
from pipeline.resolution import DEFAULT_FORMAT, ID, REFERENCE, TRANSACTION, DonationIndex, decide, lookup_keys
from pipeline.schema import upgrade
from pipeline.store.events import event_row
from pipeline.store.snapshot import differences, live_snapshot
from pipeline.store.state import SqlFoldStore
from tests.builders import add_donation, add_patient, callback_body

T0 = datetime(2026, 1, 14, 9, 30, 0, tzinfo=UTC)
CHARGE = Decimal("25000.00")

# -- 1. pure: order and duplication ---------------------------------------------------------------

PURE_KINDS = (
    "cb_success",
    "cb_mismatch",
    "cb_no_amount",
    "cb_failure",
    "cb_cancelled",
    "cb_unknown",
    "cb_untrusted_success",
    "cb_untrusted_failure",
    "poll_success",
    "poll_failed",
    "poll_cancelled",
    "poll_expired",
    "poll_pending",
    "checkout_success",
    "op_completed",
    "op_failed",
    "op_cancelled",
)


def pure_event(event_id: int, kind: str, seconds: int) -> FoldEvent:
    at = T0 + timedelta(seconds=seconds)
    source, _, what = kind.partition("_")
    if source == "cb":
        auth = "failed" if what.startswith("untrusted") else "verified"
        what = what.removeprefix("untrusted_")
        status, amount = {
            "success": ("SUCCESS", CHARGE),
            "mismatch": ("SUCCESS", CHARGE + 1),
            "no": ("SUCCESS", None),
            "failure": ("FAILED", CHARGE),
            "cancelled": ("CANCELLED", CHARGE),
            "unknown": ("UNKNOWN", CHARGE),
        }[what.split("_")[0]]
        return FoldEvent(
            event_id, at, "callback", auth, status, amount, utilityref="RHCI-DN-1-20260114093000", status_raw=what
        )
    source = {"op": "operator"}.get(source, source)
    return FoldEvent(event_id, at, source, "n/a", what.upper(), None, donation_id=1, status_raw=what)


def fresh_state() -> DonationState:
    return DonationState(1, 5, CHARGE, Decimal("20000.00"), "RHCI-DN-1-20260114093000", "tx-1")


def outcome(state: DonationState):
    return (state.status, credit_of(state), state.completed_at, state.needs_check)


pure_events = st.lists(st.tuples(st.sampled_from(PURE_KINDS), st.integers(0, 3600)), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    specs=pure_events,
    policy=st.sampled_from([TrustPolicy(), TrustPolicy(credential_configured=True), TrustPolicy(True, True)]),
    data=st.data(),
)
def test_final_state_is_independent_of_order_and_repetition(specs, policy, data):
    events = [pure_event(i + 1, kind, seconds) for i, (kind, seconds) in enumerate(specs)]
    baseline = fresh_state()
    fold_donation(baseline, events, policy)

    repeated = data.draw(st.lists(st.sampled_from(events), max_size=6), label="applied again")
    redelivered = [
        event._replace(id=len(events) + 1 + i, received_at=event.received_at + timedelta(seconds=delay))
        for i, (event, delay) in enumerate(
            data.draw(
                st.lists(st.tuples(st.sampled_from(events), st.integers(0, 600)), max_size=4), label="redelivered"
            )
        )
        if event.source != "operator"  # an operator decision is not redelivered; a new one is a new decision
    ]
    shuffled = data.draw(st.permutations(events + repeated + redelivered), label="order")
    state = fresh_state()
    fold_donation(state, shuffled, policy)
    assert outcome(state) == outcome(baseline)
    credit = credit_of(state)
    if credit is not None:
        assert credit.amount == Decimal("20000.00")  # patient_amount, never the charge
        assert state.status == COMPLETED
    else:
        assert state.status != COMPLETED


@settings(max_examples=150, deadline=None)
@given(
    existing=st.lists(st.tuples(st.integers(1, 6), st.integers(0, 100)), max_size=5, unique_by=lambda c: c[0]),
    changes=st.lists(
        st.tuples(st.integers(1, 8), st.one_of(st.none(), st.tuples(st.integers(1, 60), st.integers(0, 100)))),
        max_size=4,
        unique_by=lambda c: c[0],
    ),
    required=st.integers(1, 150),
)
def test_patient_update_agrees_with_a_full_recompute(existing, changes, required):
    """Whenever patient_update answers without reading every credit, the answer equals patient_totals."""

    def make(donation_id, amount, seconds):
        return Credit(donation_id, 1, Decimal(amount), donation_id, T0 + timedelta(seconds=seconds))

    credits = {d: make(d, a * 10, t) for d, (a, t) in ((d, (d * 7 % 5 + 1, t)) for d, t in existing)}
    required_amount = Decimal(required)
    before = patient_totals(required_amount, credits.values())
    pairs = []
    after = dict(credits)
    for donation_id, new in changes:
        old = credits.get(donation_id)
        new_credit = None if new is None else make(donation_id, new[0], new[1])
        if old == new_credit:
            continue
        pairs.append((old, new_credit))
        if new_credit is None:
            after.pop(donation_id, None)
        else:
            after[donation_id] = new_credit
    full = patient_totals(required_amount, after.values())
    quick = patient_update(required_amount, before.funding_received, before.status, before.fully_funded_at, pairs)
    if quick is None:
        assert full.status == "FULLY_FUNDED"  # a recompute is only ever asked for above the goal
    else:
        assert quick == full


KEYS = (
    "ref-a",
    "ref-b",
    "ref-c",
    "tx-a",
    "tx-b",
    "tx-c",
    "RHCI-DN-1-20260114093000",
    "RHCI-DN-2-x",
    "1",
    "2",
    "",
    None,
)
PHONES = ("255712345678", "255787654321", None)


class _DonationsByKey:
    """donations_matching over a list, as SqlFoldStore and MemoryFoldStore answer it."""

    def __init__(self, states: list[DonationState]):
        self.states = states

    def donations_matching(self, wanted):
        return {
            state.id: state.copy()
            for state in self.states
            if state.id in wanted.get(ID, ())
            or state.external_reference in wanted.get(REFERENCE, ())
            or state.transaction_id in wanted.get(TRANSACTION, ())
        }


@settings(max_examples=300, deadline=None)
@given(
    donations=st.lists(
        st.tuples(st.sampled_from(KEYS), st.sampled_from(KEYS), st.sampled_from(PHONES)), min_size=0, max_size=4
    ),
    events=st.lists(
        st.tuples(
            st.sampled_from(KEYS),
            st.sampled_from(KEYS),
            st.sampled_from(KEYS),
            st.sampled_from(KEYS),
            st.sampled_from((None, 1, 2, 3, 9)),
            st.sampled_from(PHONES),
        ),
        min_size=1,
        max_size=12,
    ),
)
@example(  # transaction_ref names donation 1, externalreference names donation 2, which another event loads by id
    donations=[("ref-a", "tx-a", None), ("ref-b", "tx-b", None)],
    events=[(None, "tx-b", None, "tx-a", None, None), (None, None, None, None, 2, None)],
)
@example(  # a hint loads donation 1 first; its transaction id must still win for the event that states it
    donations=[(None, "tx-a", None), (None, "tx-b", None)],
    events=[(None, None, "1", "tx-b", None, None)],
)
def test_batched_resolution_equals_decide_against_every_donation(donations, events):
    """jobs.fold looks transaction ids up only for what references and ids left unresolved; every event
    must still resolve exactly as decide() does against the whole donations table, conflicts included."""
    states, seen_references, seen_transactions = [], set(), set()
    for donation_id, (reference, txn, msisdn) in enumerate(donations, start=1):
        reference = reference if reference and reference not in seen_references else None  # both columns are unique
        txn = txn if txn and txn not in seen_transactions else None
        seen_references.add(reference)
        seen_transactions.add(txn)
        states.append(DonationState(donation_id, None, CHARGE, CHARGE, reference, txn, msisdn))
    everything = DonationIndex()
    for state in states:
        everything.add(state)
    folded = [
        FoldEvent(
            event_id,
            T0,
            "callback",
            "n/a",
            "SUCCESS",
            CHARGE,
            utilityref,
            externalreference,
            hint,
            transaction_ref,
            donation_id,
            msisdn=msisdn,
        )
        for event_id, (utilityref, externalreference, hint, transaction_ref, donation_id, msisdn) in enumerate(
            events, start=1
        )
    ]
    loaded, decisions, _ = _resolve_all(_DonationsByKey(states), folded, DEFAULT_FORMAT)
    assert decisions == [decide(event, lookup_keys(event), everything) for event in folded]
    assert {decision.donation_id for decision in decisions if decision.donation_id is not None} <= set(loaded)


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

"""The pure fold (pipeline/fold.py), rule by rule (docs/fold.md): operator events, derive, resolution,
patient totals and poll answers. Trust, credit and precedence: test_fold_pure.py. No database, no clock.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from pipeline.fold import (
    CANCELLED,
    COMPLETED,
    EXPIRED,
    FAILED,
    PENDING,
    REVIEW,
    Credit,
    FoldEvent,
    credit_of,
    derive,
)
from pipeline.patient_funding import PatientTotals, patient_totals, patient_update
from pipeline.resolution import DonationIndex, decide, lookup_keys
from tests.pure_fold_helpers import (
    FAILED_FIXTURE,
    FAILURE_FIXTURE,
    GUIDE_FIXTURE,
    SUCCESS_FIXTURE,
    at,
    callback,
    donation,
    ours,
    run,
)

# -- operator events -----------------------------------------------------------------------------


def test_operator_completed_resolves_review_with_a_credit_of_patient_amount():
    state = donation(patient_amount="21000.00")
    run(state, [callback(SUCCESS_FIXTURE, 1, amount="24000")])
    assert state.status == REVIEW
    kinds, transitions = run(state, [ours(2, "operator", COMPLETED, state.id, seconds=600)])
    assert kinds == []
    assert state.status == COMPLETED
    assert credit_of(state) == Credit(state.id, 7, Decimal("21000.00"), 2, at(600))
    assert state.completed_at == at(600)
    assert [(t.before, t.after) for t in transitions] == [(REVIEW, COMPLETED)]


def test_operator_completed_keeps_the_success_instant_when_there_is_one():
    state = donation()
    run(
        state,
        [
            callback(SUCCESS_FIXTURE, 1, seconds=10, transactionstatus="failure"),
            ours(2, "operator", COMPLETED, state.id, seconds=500),
        ],
    )
    assert credit_of(state).event_id == 2
    run(state, [callback(SUCCESS_FIXTURE, 3, seconds=30)])
    assert (state.status, state.completed_at, credit_of(state).event_id) == (COMPLETED, at(30), 3)


@pytest.mark.parametrize("decision", [FAILED, CANCELLED])
def test_operator_failure_overrides_a_completed_donation_and_removes_its_credit(decision):
    state = donation()
    run(state, [callback(SUCCESS_FIXTURE, 1)])
    kinds, transitions = run(state, [ours(2, "operator", decision, state.id, seconds=60)])
    assert kinds == []
    assert state.status == decision
    assert credit_of(state) is None
    assert state.completed_at is None
    assert [(t.before, t.after) for t in transitions] == [(COMPLETED, decision)]
    # a success arriving later cannot undo the operator's word
    run(state, [callback(SUCCESS_FIXTURE, 3, seconds=90)])
    assert state.status == decision


def test_latest_operator_event_by_id_wins_in_any_order():
    first, second = ours(5, "operator", FAILED, 42, seconds=900), ours(6, "operator", COMPLETED, 42, seconds=100)
    for order in ([first, second], [second, first]):
        state = donation()
        run(state, order)
        assert (state.status, state.operator_event_id) == (COMPLETED, 6)


def test_operator_event_with_a_status_it_cannot_decide_is_ignored():
    state = donation()
    run(state, [callback(SUCCESS_FIXTURE, 1), ours(2, "operator", PENDING, state.id)])
    assert state.status == COMPLETED and state.operator_event_id is None


# -- derive ---------------------------------------------------------------------------------------


def test_derive_priority():
    state = donation()
    state.expired_event_id = 1
    derive(state)
    assert state.status == EXPIRED
    state.failure_event_id, state.failure_at, state.failure_status = 2, at(0), CANCELLED
    derive(state)
    assert state.status == CANCELLED
    state.review_event_id = 3
    derive(state)
    assert state.status == REVIEW
    state.success_event_id, state.success_at = 4, at(4)
    derive(state)
    assert state.status == REVIEW  # only an amount-less (poll) success: the evidence conflicts
    state.amount_confirmed = True
    derive(state)
    assert (state.status, state.completed_at, state.credit_event_id) == (COMPLETED, at(4), 4)
    state.operator_event_id, state.operator_at, state.operator_status = 5, at(5), FAILED
    derive(state)
    assert (state.status, state.completed_at, state.credit_event_id) == (FAILED, None, None)


# -- resolution ----------------------------------------------------------------------------------


def resolve(event: FoldEvent, index: DonationIndex) -> int | None:
    return decide(event, lookup_keys(event), index).donation_id


def test_resolve_follows_the_reference_order():
    index = DonationIndex()
    for fixture in (SUCCESS_FIXTURE, FAILURE_FIXTURE):
        index.add(donation(fixture))
    assert resolve(callback(SUCCESS_FIXTURE, 1), index) == 42
    # our reference unknown, but AzamPay's transaction id is the donation's transaction_id: a strong key
    assert resolve(callback(SUCCESS_FIXTURE, 1, utilityref="RHCI-DN-1-20200101000000"), index) == 42
    # only the donation_id hint, and the reference inside utilityref names the same donation, which stores none
    hinted = donation(FAILED_FIXTURE)
    hinted.external_reference, hinted.transaction_id = None, None
    index.add(hinted)
    no_transaction = dict(reference=None, transid=None, externalreference=None)
    assert resolve(callback(FAILED_FIXTURE, 1, **no_transaction), index) == 45
    # ... but a transaction id it states cannot be checked before the checkout stores one: it waits
    assert resolve(callback(FAILED_FIXTURE, 1), index) is None
    # nothing matches
    assert resolve(callback(GUIDE_FIXTURE, 1), index) is None
    # our own events name the donation and only that
    assert resolve(ours(1, "poll", "SUCCESS", 44), index) == 44
    assert resolve(ours(1, "poll", "SUCCESS", 4444), index) is None


# -- patient totals ------------------------------------------------------------------------------


def credit(donation_id: int, amount: str, seconds: float, patient_id: int = 1) -> Credit:
    return Credit(donation_id, patient_id, Decimal(amount), donation_id * 10, at(seconds))


def test_fully_funded_from_the_crossing_credit_in_credited_at_order():
    credits = [credit(1, "40000", 30), credit(2, "40000", 10), credit(3, "40000", 20)]
    for order in (credits, credits[::-1], credits[1:] + credits[:1]):
        totals = patient_totals(Decimal("100000"), order)
        assert totals == PatientTotals(Decimal("120000"), "FULLY_FUNDED", at(30))


def test_fully_funded_tie_on_instant_is_broken_by_donation_id():
    credits = [credit(9, "60000", 10), credit(4, "60000", 10), credit(1, "10", 5)]
    assert patient_totals(Decimal("60000"), credits).fully_funded_at == at(10)
    credits = [credit(9, "50000", 10), credit(4, "50000", 10)]
    totals = patient_totals(Decimal("50000"), credits)
    assert totals.fully_funded_at == at(10)
    # donation 4 crosses first: only its credit alone reaches the goal
    assert patient_totals(Decimal("50000"), [credit(4, "50000", 10), credit(9, "1", 10)]).fully_funded_at == at(10)


def test_exactly_reaching_the_goal_is_fully_funded_one_cent_short_is_not():
    assert patient_totals(Decimal("100.00"), [credit(1, "60.00", 1), credit(2, "40.00", 2)]) == PatientTotals(
        Decimal("100.00"), "FULLY_FUNDED", at(2)
    )
    assert patient_totals(Decimal("100.00"), [credit(1, "60.00", 1), credit(2, "39.99", 2)]) == PatientTotals(
        Decimal("99.99"), "FUNDING", None
    )
    assert patient_totals(Decimal("100.00"), []) == PatientTotals(Decimal("0"), "FUNDING", None)


def test_patient_update_incremental_below_the_goal():
    result = patient_update(Decimal("100000"), Decimal("10000"), "FUNDING", None, [(None, credit(1, "25000", 5))])
    assert result == PatientTotals(Decimal("35000"), "FUNDING", None)


def test_patient_update_needs_a_recompute_when_the_goal_is_crossed():
    assert patient_update(Decimal("100000"), Decimal("90000"), "FUNDING", None, [(None, credit(1, "10000", 5))]) is None


def test_patient_update_keeps_fully_funded_at_for_a_later_credit():
    result = patient_update(Decimal("100"), Decimal("100"), "FULLY_FUNDED", at(10), [(None, credit(5, "7", 11))])
    assert result == PatientTotals(Decimal("107"), "FULLY_FUNDED", at(10))
    # a later credit removed, still above the goal: incremental too
    result = patient_update(Decimal("100"), Decimal("107"), "FULLY_FUNDED", at(10), [(credit(5, "7", 11), None)])
    assert result == PatientTotals(Decimal("100"), "FULLY_FUNDED", at(10))


@pytest.mark.parametrize(
    "change",
    [
        (None, credit(5, "7", 9)),  # a credit before the crossing point
        (None, credit(5, "7", 10)),  # at the crossing instant (order by donation id decides)
        (credit(5, "7", 11), credit(5, "7", 8)),  # a credit moved to before the crossing point
        (credit(2, "7", 3), None),  # a credit before the crossing removed, still above the goal
    ],
)
def test_patient_update_needs_a_recompute_when_a_change_touches_the_crossing(change):
    assert patient_update(Decimal("100"), Decimal("120"), "FULLY_FUNDED", at(10), [change]) is None


def test_patient_update_drops_back_to_funding_when_a_credit_is_removed():
    result = patient_update(Decimal("100"), Decimal("100"), "FULLY_FUNDED", at(10), [(credit(3, "40", 10), None)])
    assert result == PatientTotals(Decimal("60"), "FUNDING", None)


def test_poll_success_does_not_take_a_donation_out_of_review_in_either_order():
    """A poll answer states no amount; against a callback with the wrong amount the operator decides."""
    for order in ((1, 2), (2, 1)):
        state = donation()
        events = {1: callback(SUCCESS_FIXTURE, 1, amount="25001"), 2: ours(2, "poll", "SUCCESS", state.id)}
        run(state, [events[i] for i in order])
        assert state.status == REVIEW and credit_of(state) is None


@pytest.mark.parametrize(
    "first, poll_status, anomalies",
    [
        ("success", "SUCCESS", []),  # poll --donation N twice on a COMPLETED donation
        ("failed", "FAILED", []),
        ("cancelled", "FAILED", []),  # AzamPay's status API cannot say CANCELLED: FAILED agrees
        ("success", "FAILED", ["conflicting_status", "conflicting_status"]),  # disagrees with the status
        ("failed", "SUCCESS", ["late_success"]),  # the second poll agrees with the COMPLETED the first made
    ],
)
def test_polling_a_terminal_donation_adds_an_anomaly_only_when_the_answer_disagrees(first, poll_status, anomalies):
    state = donation()
    run(state, [callback(SUCCESS_FIXTURE, 1, transactionstatus=first)])
    before = state.status
    kinds, _ = run(
        state, [ours(2, "poll", poll_status, state.id, seconds=60), ours(3, "poll", poll_status, state.id, seconds=120)]
    )
    assert kinds == anomalies
    if not anomalies:
        assert state.status == before


# -- purity ---------------------------------------------------------------------------------------


def test_the_rules_modules_load_no_database_and_no_logging():
    """pipeline/fold.py, fold_batch.py, invariants.py, snapshot.py and report_sections.py hold rules only: importing
    them loads neither SQLAlchemy nor loguru (jobs/ and pipeline/store/ do the I/O)."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, pipeline.fold, pipeline.fold_batch, pipeline.invariants, pipeline.snapshot, "
        "pipeline.report_sections; print(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'loguru'}))"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert done.stdout.strip() == "[]"


# -- an unrecognised status is described by its plain text ----------------------------------------


@pytest.mark.parametrize(
    ("status", "status_raw", "said"), [("UNKNOWN", None, "'UNKNOWN'"), ("UNKNOWN", "weird", "'weird'")]
)
def test_an_unknown_status_anomaly_names_the_plain_value(status, status_raw, said):
    from pipeline.fold import Status, apply
    from tests.pure_fold_helpers import OPEN

    for value in (status, Status(status)):  # a Status prints as the plain string, not its repr
        event = FoldEvent(1, at(0), "poll", "n/a", value, None, donation_id=1, status_raw=status_raw)
        anomalies, _ = apply(donation(), event, OPEN)
        assert [a.detail for a in anomalies] == [f"poll status {said} not recognised"]

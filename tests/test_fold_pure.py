"""The pure fold (pipeline/fold.py), rule by rule (DESIGN §4), driven by the recorded AzamPay payloads.

Each callback event is built the way the log builds it: fixture bytes -> pipeline.events.extract_fields
-> the typed columns -> FoldEvent. No database, no clock.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from pipeline.events import extract_fields
from pipeline.fold import (
    CANCELLED,
    COMPLETED,
    EXPIRED,
    FAILED,
    PENDING,
    REVIEW,
    Credit,
    DonationState,
    FoldEvent,
    PatientTotals,
    TrustPolicy,
    credit_of,
    derive,
    fold_donation,
    patient_totals,
    patient_update,
)
from pipeline.resolution import DonationIndex, decide, lookup_keys
from tests.conftest import fixture_bytes

T0 = datetime(2026, 1, 14, 9, 30, 0, tzinfo=UTC)
OPEN = TrustPolicy()  # no credential configured: every callback trusted
LOCKED = TrustPolicy(credential_configured=True)  # password or signature configured
VERIFY = TrustPolicy(credential_configured=True, verify_only=True)  # mode `verify`

SUCCESS_FIXTURE = "callback_live_shape_success.json"  # RHCI-DN-42-20260114093012, 25000
MINIMAL_FIXTURE = "callback_live_shape_minimal.json"  # RHCI-DN-43-20260114101545, 60000
FAILURE_FIXTURE = "callback_failure.json"  # RHCI-DN-44-20260114111200, "failure"
FAILED_FIXTURE = "callback_failed_spelling.json"  # RHCI-DN-45-20260114112233, "FAILED", donation_id hint 45
GUIDE_FIXTURE = "callback_guide_example.json"  # RHCI-DN-999-20251219120000, 1000


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def body(name: str, **changes) -> bytes:
    """A fixture payload, byte-exact, or with some keys changed (e.g. transactionstatus, amount)."""
    raw = fixture_bytes(name)
    if not changes:
        return raw
    data = json.loads(raw)
    data.update(changes)
    return json.dumps(data).encode()


def callback(
    name: str, event_id: int, seconds: float = 0, auth: str = "n/a", source: str = "callback", **changes
) -> FoldEvent:
    fields = extract_fields(body(name, **changes))
    assert fields.parse_error is None, fields.parse_error
    return FoldEvent(
        id=event_id,
        received_at=at(seconds),
        source=source,
        auth=auth,
        status=fields.status,
        amount=fields.amount,
        utilityref=fields.utilityref,
        externalreference=fields.externalreference,
        donation_hint=fields.donation_hint,
        transaction_ref=fields.transaction_ref,
        donation_id=None,
        parse_error=fields.parse_error,
        status_raw=fields.status_raw,
        msisdn=fields.msisdn,
        operator=fields.operator,
    )


def ours(
    event_id: int, source: str, status: str, donation_id: int, seconds: float = 0, amount: Decimal | None = None
) -> FoldEvent:
    """A poll / checkout / operator event: appended by us, names its donation, usually carries no amount."""
    return FoldEvent(event_id, at(seconds), source, "n/a", status, amount, donation_id=donation_id, status_raw=status)


def donation(
    fixture: str = SUCCESS_FIXTURE,
    patient_id: int | None = 7,
    patient_amount: str | None = None,
    donation_id: int | None = None,
) -> DonationState:
    """The donation a fixture payload is about: its reference, its amount as charge_amount."""
    fields = extract_fields(fixture_bytes(fixture))
    reference = fields.utilityref
    number = donation_id if donation_id is not None else int(reference.split("-")[2])
    charge = fields.amount
    return DonationState(
        id=number,
        patient_id=patient_id,
        charge_amount=charge,
        patient_amount=Decimal(patient_amount) if patient_amount is not None else charge,
        external_reference=reference,
        transaction_id=fields.transaction_ref,
    )


def run(state: DonationState, events, policy: TrustPolicy = OPEN):
    anomalies, transitions = fold_donation(state, events, policy)
    return [a.kind for a in anomalies], transitions


# -- trust ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["n/a", "unverified", "failed", "verified"])
def test_without_a_credential_every_callback_is_trusted(auth):
    state = donation()
    kinds, _ = run(state, [callback(SUCCESS_FIXTURE, 1, auth=auth)], OPEN)
    assert state.status == COMPLETED
    assert kinds == []
    assert state.needs_check is False


@pytest.mark.parametrize(
    "auth, trusted", [("verified", True), ("unverified", False), ("failed", False), ("n/a", False)]
)
def test_with_a_credential_only_verified_callbacks_are_trusted(auth, trusted):
    state = donation()
    kinds, _ = run(state, [callback(SUCCESS_FIXTURE, 1, auth=auth)], LOCKED)
    if trusted:
        assert (state.status, kinds, state.needs_check) == (COMPLETED, [], False)
        assert credit_of(state) is not None
    else:
        assert (state.status, kinds, state.needs_check) == (PENDING, ["unauthenticated"], True)
        assert credit_of(state) is None


@pytest.mark.parametrize("source", ["callback", "import"])
def test_verify_mode_trusts_no_callback_even_verified(source):
    state = donation()
    kinds, _ = run(state, [callback(SUCCESS_FIXTURE, 1, auth="verified", source=source)], VERIFY)
    assert (state.status, kinds, state.needs_check) == (PENDING, ["unauthenticated"], True)
    assert credit_of(state) is None


@pytest.mark.parametrize("source", ["poll", "checkout", "operator"])
@pytest.mark.parametrize("policy", [OPEN, LOCKED, VERIFY], ids=["open", "credential", "verify"])
def test_poll_checkout_and_operator_events_are_always_trusted(source, policy):
    state = donation()
    status = COMPLETED if source == "operator" else "SUCCESS"
    kinds, _ = run(state, [ours(1, source, status, state.id)], policy)
    assert state.status == COMPLETED
    assert kinds == []
    assert credit_of(state).amount == Decimal("25000.00")


def test_untrusted_failure_changes_nothing_but_asks_for_a_poll():
    state = donation(FAILURE_FIXTURE)
    kinds, transitions = run(state, [callback(FAILURE_FIXTURE, 1, auth="failed")], LOCKED)
    assert (state.status, kinds, state.needs_check, transitions) == (PENDING, ["unauthenticated"], True, [])
    # a poll answer then decides
    kinds, _ = run(state, [ours(2, "poll", FAILED, state.id)], LOCKED)
    assert state.status == FAILED


def test_untrusted_success_does_not_count_toward_completed_at():
    state = donation()
    run(
        state,
        [
            callback(SUCCESS_FIXTURE, 1, seconds=5, auth="unverified"),
            callback(SUCCESS_FIXTURE, 2, seconds=50, auth="verified"),
        ],
        LOCKED,
    )
    assert state.status == COMPLETED
    assert (state.completed_at, state.credit_event_id) == (at(50), 2)


# -- credit --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", [SUCCESS_FIXTURE, MINIMAL_FIXTURE, GUIDE_FIXTURE])
def test_trusted_success_with_matching_amount_completes_and_credits_patient_amount(fixture):
    state = donation(fixture, patient_amount="900.00")
    kinds, transitions = run(state, [callback(fixture, 11, seconds=3)])
    assert kinds == []
    assert state.status == COMPLETED
    assert state.completed_at == at(3)
    assert credit_of(state) == Credit(state.id, 7, Decimal("900.00"), 11, at(3))
    assert [(t.before, t.after, t.event_id, t.reference, t.event_status) for t in transitions] == [
        (PENDING, COMPLETED, 11, state.external_reference, "SUCCESS")
    ]


def test_patient_is_credited_patient_amount_not_the_total():
    state = donation(patient_amount="20000.00")  # 25000 total, 5000 support share
    run(state, [callback(SUCCESS_FIXTURE, 1)])
    credit = credit_of(state)
    assert credit.amount == Decimal("20000.00")
    assert credit.amount != state.charge_amount


def test_general_donation_credit_names_no_patient():
    state = donation(patient_id=None)
    run(state, [callback(SUCCESS_FIXTURE, 1)])
    assert state.status == COMPLETED
    assert credit_of(state).patient_id is None


@pytest.mark.parametrize("amount", ["24999.99", "25000.01", "2500", "250000", "0"])
def test_success_with_another_amount_goes_to_review_without_credit(amount):
    state = donation()
    kinds, transitions = run(state, [callback(SUCCESS_FIXTURE, 1, amount=amount)])
    assert state.status == REVIEW
    assert kinds == ["amount_mismatch"]
    assert credit_of(state) is None
    assert state.completed_at is None
    assert Decimal(amount).quantize(Decimal("0.01")).to_eng_string() in state.review_reason
    assert [t.after for t in transitions] == [REVIEW]


def test_amount_written_differently_but_equal_matches():
    state = donation()
    run(state, [callback(SUCCESS_FIXTURE, 1, amount="25000.00"), callback(SUCCESS_FIXTURE, 2, amount=25000)])
    assert state.status == COMPLETED
    assert state.review_event_id is None


@pytest.mark.parametrize("amount", ["25000.001", "25,000", "1_000", "２５０００", "2.5e4", "-25000", "1000000000000"])
def test_success_with_an_unusable_amount_goes_to_review_and_no_poll_completes_it(amount):
    """Issue: "25000.001" used to make the whole callback a parse failure, linked to no donation, and the
    next poll completed and credited the donation. Now every other field is kept and the amount is a fact."""
    fields = extract_fields(body(SUCCESS_FIXTURE, amount=amount))
    assert (fields.parse_error, fields.amount, fields.utilityref) == (None, None, "RHCI-DN-42-20260114093012")
    assert fields.amount_error
    state = donation()
    kinds, _ = run(state, [callback(SUCCESS_FIXTURE, 1, amount=amount), ours(2, "poll", "SUCCESS", 42, seconds=60)])
    assert state.status == REVIEW
    assert kinds[0] == "amount_mismatch"
    assert credit_of(state) is None


def test_callback_success_without_an_amount_is_not_a_match():
    state = donation()
    kinds, _ = run(state, [callback(SUCCESS_FIXTURE, 1, amount=None)])
    assert (state.status, kinds) == (REVIEW, ["amount_mismatch"])


@pytest.mark.parametrize("source", ["poll", "checkout"])
def test_poll_or_checkout_success_without_amount_counts_as_matching(source):
    state = donation()
    run(state, [ours(1, source, "SUCCESS", state.id)])
    assert state.status == COMPLETED
    assert credit_of(state).amount == Decimal("25000.00")


def test_poll_success_with_a_wrong_amount_goes_to_review():
    state = donation()
    kinds, _ = run(state, [ours(1, "poll", "SUCCESS", state.id, amount=Decimal("100.00"))])
    assert (state.status, kinds) == (REVIEW, ["amount_mismatch"])


def test_matching_success_after_a_mismatch_completes():
    """A trusted SUCCESS with the right amount wins over a REVIEW raised by a wrong-amount success."""
    state = donation()
    kinds, _ = run(state, [callback(SUCCESS_FIXTURE, 1, amount="1"), callback(SUCCESS_FIXTURE, 2, seconds=9)])
    assert kinds == ["amount_mismatch"]
    assert state.status == COMPLETED
    assert credit_of(state).event_id == 2


# -- precedence ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first, final_before",
    [
        (lambda s: callback(SUCCESS_FIXTURE, 1, transactionstatus="failure"), FAILED),
        (lambda s: callback(SUCCESS_FIXTURE, 1, transactionstatus="cancelled"), CANCELLED),
        (lambda s: ours(1, "poll", EXPIRED, s.id), EXPIRED),
        (lambda s: ours(1, "poll", FAILED, s.id), FAILED),
    ],
    ids=["failed", "cancelled", "expired", "poll-failed"],
)
def test_trusted_success_wins_over_failure_and_records_late_success(first, final_before):
    state = donation()
    kinds, transitions = run(state, [first(state)])
    assert state.status == final_before and kinds == []
    kinds, transitions = run(state, [callback(SUCCESS_FIXTURE, 2, seconds=60)])
    assert kinds == ["late_success"]
    assert state.status == COMPLETED
    assert (transitions[0].before, transitions[0].after) == (final_before, COMPLETED)
    assert credit_of(state) == Credit(state.id, 7, Decimal("25000.00"), 2, at(60))


@pytest.mark.parametrize("status, expected", [("failure", FAILED), ("FAILED", FAILED), ("cancelled", CANCELLED)])
def test_completed_is_never_uncredited_by_a_later_failure(status, expected):
    state = donation()
    run(state, [callback(SUCCESS_FIXTURE, 1)])
    credit = credit_of(state)
    kinds, transitions = run(state, [callback(SUCCESS_FIXTURE, 2, seconds=30, transactionstatus=status)])
    assert kinds == ["conflicting_status"]
    assert transitions == []
    assert state.status == COMPLETED
    assert state.failure_status == expected  # remembered, but it does not decide
    assert credit_of(state) == credit


def test_failure_fixtures_fail_their_donations():
    for fixture, expected_id in ((FAILURE_FIXTURE, 44), (FAILED_FIXTURE, 45)):
        state = donation(fixture)
        kinds, transitions = run(state, [callback(fixture, 1)])
        assert (state.id, state.status, kinds) == (expected_id, FAILED, [])
        assert transitions[0].event_status == FAILED


def test_duplicate_success_is_counted_and_credits_once():
    state = donation()
    kinds, transitions = run(
        state, [callback(SUCCESS_FIXTURE, 1, seconds=10), callback(SUCCESS_FIXTURE, 2, seconds=20)]
    )
    assert kinds == ["duplicate"]
    assert len(transitions) == 1
    assert credit_of(state) == Credit(state.id, 7, Decimal("25000.00"), 1, at(10))
    # redelivered again, a poll confirming it too: still one credit, same event, same instant
    kinds, transitions = run(
        state, [callback(SUCCESS_FIXTURE, 3, seconds=30), ours(4, "poll", "SUCCESS", state.id, seconds=40)]
    )
    assert kinds == ["duplicate"]  # the redelivered callback; a poll that agrees is a record, not an anomaly
    assert transitions == []
    assert credit_of(state) == Credit(state.id, 7, Decimal("25000.00"), 1, at(10))


def test_completed_at_is_the_earliest_trusted_success_whatever_the_arrival_order():
    state = donation()
    run(
        state,
        [
            callback(SUCCESS_FIXTURE, 1, seconds=100),
            callback(SUCCESS_FIXTURE, 2, seconds=40),
            ours(3, "poll", "SUCCESS", state.id, seconds=70),
        ],
    )
    assert (state.completed_at, state.credit_event_id) == (at(40), 2)
    # same instant: the lower id decides
    state = donation()
    run(state, [callback(SUCCESS_FIXTURE, 9, seconds=40), callback(SUCCESS_FIXTURE, 5, seconds=40)])
    assert state.credit_event_id == 5


@pytest.mark.parametrize("raw", ["PROCESSING", "weird", "", 7])
def test_unknown_status_is_flagged_and_changes_nothing(raw):
    state = donation()
    event = (
        callback(SUCCESS_FIXTURE, 1, transactionstatus=raw)
        if raw != ""
        else callback(SUCCESS_FIXTURE, 1, transactionstatus="??")
    )
    kinds, transitions = run(state, [event])
    assert event.status == "UNKNOWN"
    assert (state.status, kinds, transitions, state.needs_check) == (PENDING, ["unknown_status"], [], True)


def test_earliest_trusted_failure_decides_among_failures():
    events = [
        callback(SUCCESS_FIXTURE, 1, seconds=20, transactionstatus="failure"),
        callback(SUCCESS_FIXTURE, 2, seconds=10, transactionstatus="cancelled"),
    ]
    for order in (events, events[::-1]):
        state = donation()
        run(state, order)
        assert (state.status, state.failure_event_id) == (CANCELLED, 2)
    # same instant: lower id
    state = donation()
    run(
        state,
        [
            callback(SUCCESS_FIXTURE, 8, seconds=5, transactionstatus="cancelled"),
            callback(SUCCESS_FIXTURE, 3, seconds=5, transactionstatus="failure"),
        ],
    )
    assert state.status == FAILED


def test_different_failures_conflict():
    state = donation()
    kinds, _ = run(
        state,
        [
            callback(SUCCESS_FIXTURE, 1, transactionstatus="failure"),
            callback(SUCCESS_FIXTURE, 2, seconds=5, transactionstatus="cancelled"),
        ],
    )
    assert kinds == ["conflicting_status"]
    assert state.status == FAILED


def test_expired_only_when_nothing_else_is_known():
    state = donation()
    run(state, [ours(1, "poll", EXPIRED, state.id)])
    assert state.status == EXPIRED
    run(state, [callback(SUCCESS_FIXTURE, 2, seconds=5, transactionstatus="cancelled")])
    assert state.status == CANCELLED
    state = donation()
    run(state, [callback(SUCCESS_FIXTURE, 1, amount="3"), ours(2, "poll", EXPIRED, state.id)])
    assert state.status == REVIEW


def test_pending_poll_answer_changes_nothing():
    state = donation()
    kinds, transitions = run(state, [ours(1, "poll", PENDING, state.id)])
    assert (state.status, kinds, transitions, state.events_applied, state.last_event_id) == (PENDING, [], [], 1, 1)


def test_bookkeeping_of_applied_events():
    state = donation()
    run(
        state,
        [
            callback(SUCCESS_FIXTURE, 3),
            callback(SUCCESS_FIXTURE, 8, transactionstatus="failure"),
            ours(5, "poll", PENDING, state.id),
        ],
    )
    assert state.events_applied == 3
    assert state.last_event_id == 8
    reset = state.reset()
    assert (reset.status, reset.events_applied, reset.last_event_id, reset.external_reference) == (
        PENDING,
        0,
        None,
        state.external_reference,
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

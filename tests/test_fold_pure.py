"""The pure fold (pipeline/fold.py), rule by rule (docs/fold.md), driven by the recorded AzamPay payloads:
trust, credit and precedence. Operator events, derive, resolution, patient totals and polls:
test_fold_pure_decisions.py.

Each callback event is built the way the log builds it: fixture bytes -> pipeline.events.extract_fields
-> the typed columns -> FoldEvent. No database, no clock.
"""

from __future__ import annotations

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
    credit_of,
)
from tests.pure_fold_helpers import (
    FAILED_FIXTURE,
    FAILURE_FIXTURE,
    GUIDE_FIXTURE,
    LOCKED,
    MINIMAL_FIXTURE,
    OPEN,
    SUCCESS_FIXTURE,
    VERIFY,
    at,
    body,
    callback,
    donation,
    ours,
    run,
)

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

"""Properties of the pure fold and its batch rules (docs/fold.md), with Hypothesis.

A donation's final status, credit and completed_at do not depend on the order its events are applied in,
nor on any event being applied more than once; patient_update agrees with a full recompute; the batched
resolution equals pipeline.resolution.decide against every donation. The same on a real database:
test_fold_properties_db.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.fold import (
    COMPLETED,
    Credit,
    DonationState,
    FoldEvent,
    TrustPolicy,
    credit_of,
    fold_donation,
)
from pipeline.fold_batch import _resolve_all
from pipeline.patient_funding import patient_totals, patient_update
from pipeline.resolution import DEFAULT_FORMAT, ID, REFERENCE, TRANSACTION, DonationIndex, decide, lookup_keys

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

"""The one resolution rule (pipeline.resolution), as a property: for any event and any set of donations, the
receiver's 200/404, the fold (on the database) and rebuild --check (in memory) resolve the same donation as
pipeline.resolution.decide against every donation. Case by case: test_resolution.py."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete

from pipeline.db import transaction
from pipeline.events import EventFields
from pipeline.fold import FoldEvent
from pipeline.fold_batch import _resolve_all
from pipeline.models import Donation
from pipeline.resolution import DEFAULT_FORMAT, DonationFacts, DonationIndex, ReferenceFormat, decide, lookup_keys
from pipeline.store.events import Claim, resolve_claims
from pipeline.store.memory import MemoryFoldStore
from pipeline.store.state import SqlFoldStore

T0 = datetime(2026, 1, 14, 9, 30, tzinfo=UTC)


REFERENCES = ("RHCI-DN-1-20260101080000", "RHCI-DN-2-20260101080000", "RHCI-DN-2-x", "ORDER-5", "tx-a", "tx-b", None)
TRANSACTIONS = ("tx-a", "tx-b", "RHCI-DN-1-20260101080000", None)
PHONES = ("255758285812", "255789123456", None)
OPERATORS = ("Mpesa", "Airtel", None)
donation_specs = st.lists(
    st.tuples(
        st.sampled_from(REFERENCES), st.sampled_from(TRANSACTIONS), st.sampled_from(PHONES), st.sampled_from(OPERATORS)
    ),
    max_size=3,
)
event_specs = st.tuples(
    st.sampled_from(REFERENCES),
    st.sampled_from(REFERENCES),
    st.sampled_from(("1", "2", "3", "02", "x", None)),
    st.sampled_from(TRANSACTIONS),
    st.sampled_from(PHONES),
    st.sampled_from(OPERATORS),
)


def _store_donations(session, specs) -> list[DonationFacts]:
    session.execute(delete(Donation))
    facts, seen = [], set()
    for donation_id, (reference, txn, msisdn, provider) in enumerate(specs, start=1):
        reference = reference if reference not in seen else None  # both columns are unique
        txn = txn if txn not in seen else None
        seen.update((reference, txn))
        session.add(
            Donation(
                id=donation_id,
                amount=Decimal(1000),
                currency="TZS",
                patient_amount=Decimal(1000),
                charge_amount=Decimal(1000),
                charge_currency="TZS",
                msisdn=msisdn,
                provider=provider,
                external_reference=reference,
                transaction_id=txn,
                created_at=T0,
                status="PENDING",
            )
        )
        facts.append(DonationFacts(donation_id, reference, txn, msisdn, provider))
    session.flush()
    return facts


def _property(backend):
    @settings(
        max_examples=60 if backend.name == "mysql" else 200,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(donations=donation_specs, event=event_specs)
    @example(
        donations=[("RHCI-DN-9-20260101080000", None, None, None)],
        event=("RHCI-DN-9-20251201000000", None, "1", None, None, None),
    )
    @example(donations=[(None, "tx-a", None, None)], event=(None, "tx-a", None, None, None, None))
    def run(donations, event):
        utilityref, externalreference, hint, transaction_ref, msisdn, operator = event
        fields = EventFields(
            utilityref=utilityref,
            externalreference=externalreference,
            donation_hint=hint,
            transaction_ref=transaction_ref,
            msisdn=msisdn,
            operator=operator,
            status="SUCCESS",
            amount=Decimal(1000),
        )
        folded = FoldEvent(
            1,
            T0,
            "callback",
            "n/a",
            "SUCCESS",
            Decimal(1000),
            utilityref,
            externalreference,
            hint,
            transaction_ref,
            None,
            msisdn=msisdn,
            operator=operator,
        )
        with transaction(backend.engine) as session:
            facts = _store_donations(session, donations)
            answered = resolve_claims(session, [Claim.of(fields)])[0]  # the receiver's 200/404
            _, (by_fold,), _ = _resolve_all(
                SqlFoldStore(session), [folded], DEFAULT_FORMAT
            )  # the fold, on the database
            _, (by_check,), _ = _resolve_all(
                MemoryFoldStore(session), [folded], DEFAULT_FORMAT
            )  # rebuild --check, in memory
            session.rollback()
        everything = DonationIndex()
        for donation in facts:
            everything.add(donation)
        assert answered == by_fold == by_check == decide(folded, lookup_keys(folded), everything)

    return run


def test_2_the_receiver_answers_200_exactly_when_the_fold_resolves_to_the_same_donation(backend):
    """Hypothesis: for any event and any set of donations, the receiver answers 200 exactly when the fold
    resolves the event to a donation, and to the same one (and rebuild --check's in-memory store too)."""
    _property(backend)()


def test_2_a_custom_reference_prefix_is_read_by_the_rule():
    fmt = ReferenceFormat("ACME")
    assert fmt.donation_id("ACME-12-20260101080000") == 12
    assert fmt.donation_id("RHCI-DN-12-20260101080000") is None
    assert fmt.donation_id("ACME-12") is None and fmt.donation_id("ACME-１２-x") is None
    event = FoldEvent(1, T0, "callback", "n/a", "SUCCESS", None, utilityref="ACME-12-20260101080000")
    assert [key.value for key in lookup_keys(event, fmt) if not key.strong] == [12]

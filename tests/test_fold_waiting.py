"""The fold job and waiting events, on a real SQLite file and a real MariaDB: unknown references applied once
the donation appears, checkout answers that resolve callbacks which arrived before them, waiting events
read again in every batch.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, update

from jobs.fold import run_fold
from jobs.rebuild import rebuild
from pipeline.db import transaction
from pipeline.events import EventFields
from pipeline.models import Donation, PaymentEvent
from pipeline.store.donations import make_reference
from pipeline.store.events import event_row
from pipeline.store.state import SqlFoldStore
from pipeline.store.waiting import offered_keys
from tests.builders import add_donation, add_patient, append, at, callback_body
from tests.fold_helpers import (
    anomaly_kinds,
    applied_ids,
    assert_same_as_rebuild,
    donation_row,
    failure,
    patient_row,
    success,
)

# -- unknown references ----------------------------------------------------------------------------


def test_unknown_reference_is_applied_once_the_donation_appears(backend, now):
    config = backend.config(**{"fold.batch_size": 2})
    patient = add_patient(backend.engine, now, required="25000")
    created = at(now, 30)
    expected_reference = make_reference("RHCI-DN", 1, created)  # the first donation of a fresh database
    early = success(backend.engine, expected_reference, at(now, 10), transaction_id="tx-early")
    by_transaction = failure(
        backend.engine, "RHCI-DN-0-20000101000000", at(now, 11), amount="25000", transaction_id="tx-early"
    )
    run_fold(backend.engine, config, at(now, 12))
    assert anomaly_kinds(backend) == ["unknown_reference", "unknown_reference"]
    assert {row[0] for row in backend.rows("SELECT event_id FROM anomalies")} == {early, by_transaction}

    donation, reference = add_donation(
        backend.engine, created, patient_id=patient, amount="25000", transaction_id="tx-early"
    )
    assert (donation, reference) == (1, expected_reference)
    later = success(backend.engine, reference, at(now, 40))
    report = run_fold(backend.engine, config, at(now, 41))
    assert report.events == 1
    row = donation_row(backend, donation)
    assert row["status"] == "COMPLETED"
    assert applied_ids(backend, donation) == [early, by_transaction, later]
    assert row["credit_event_id"] == early
    assert anomaly_kinds(backend) == []  # the unknown_reference anomalies are gone
    assert anomaly_kinds(backend, donation) == ["conflicting_status", "duplicate"]
    assert patient_row(backend, patient)["status"] == "FULLY_FUNDED"
    assert_same_as_rebuild(backend, config, at(now, 50))


def test_unknown_reference_is_retried_even_without_new_events(backend, now):
    config = backend.config()
    created = at(now, 30)
    early = success(backend.engine, make_reference("RHCI-DN", 1, created), at(now, 10))
    run_fold(backend.engine, config, at(now, 12))
    donation, _ = add_donation(backend.engine, created, amount="25000")
    report = run_fold(backend.engine, config, at(now, 41))
    assert report.events == 0
    assert donation_row(backend, donation)["status"] == "COMPLETED"
    assert anomaly_kinds(backend) == []
    assert donation_row(backend, donation)["credit_event_id"] == early
    assert_same_as_rebuild(backend, config, at(now, 50))


def test_a_zero_padded_donation_hint_is_retried_as_resolve_reads_it(backend, now):
    """additionalProperties.donation_id "01" names donation 1 (pipeline.resolution.as_id): the incremental
    retry must see it as a rebuild does, or the two would disagree. The callback states no reference, and
    its other facts (msisdn, operator) agree with the donation, so the weak key is accepted."""
    config = backend.config()
    early = append(
        backend.engine, callback_body("", transaction_id=None, additionalProperties={"donation_id": "01"}), at(now, 10)
    )
    run_fold(backend.engine, config, at(now, 12))
    assert anomaly_kinds(backend) == ["unknown_reference"]
    donation, _ = add_donation(backend.engine, at(now, 30), amount="25000")
    assert donation == 1
    run_fold(backend.engine, config, at(now, 41))
    assert donation_row(backend, donation)["credit_event_id"] == early
    assert anomaly_kinds(backend) == []
    assert_same_as_rebuild(backend, config, at(now, 50))


def test_a_waiting_hint_whose_donation_disagrees_becomes_a_conflict_as_in_a_rebuild(backend, now):
    """The same callback with a foreign reference: when donation 1 appears, the retry refuses it
    (reference_conflict, nothing credited), exactly as a rebuild does."""
    config = backend.config()
    success(
        backend.engine,
        "RHCI-DN-X-not-ours",
        at(now, 10),
        transaction_id="tx-hint",
        additionalProperties={"donation_id": "01"},
    )
    run_fold(backend.engine, config, at(now, 12))
    assert anomaly_kinds(backend) == ["unknown_reference"]
    donation, _ = add_donation(backend.engine, at(now, 30), amount="25000")
    run_fold(backend.engine, config, at(now, 41))
    assert donation_row(backend, donation)["status"] == "PENDING"
    assert anomaly_kinds(backend) == [] and anomaly_kinds(backend, donation_id=donation) == ["reference_conflict"]
    assert backend.scalar("SELECT COUNT(*) FROM funding_credits") == 0
    assert_same_as_rebuild(backend, config, at(now, 50))


def record_checkout(engine, donation_id: int, transaction_id: str, when: datetime) -> int:
    """What pipeline.checkout records on AzamPay's answer: the donation's transaction id and the checkout
    event, in one transaction."""
    row = event_row(
        source="checkout",
        body=b'{"success":true}',
        received_at=when,
        auth="n/a",
        fields=EventFields(status="PENDING", transaction_ref=transaction_id),
        donation_id=donation_id,
    )
    with transaction(engine) as session:
        session.execute(update(Donation).where(Donation.id == donation_id).values(transaction_id=transaction_id))
        return session.execute(insert(PaymentEvent).values(**row)).inserted_primary_key[0]


def test_checkout_answer_resolves_a_callback_that_arrived_before_it(backend, now):
    """The callback names only AzamPay's transaction id, and is folded before the checkout answer that
    records that id is: it waits, and the checkout's batch resolves it."""
    config = backend.config()
    donation, _ = add_donation(backend.engine, now)
    early = success(backend.engine, "RHCI-DN-0-20000101000000", at(now, 1), transaction_id="tx-fast")
    run_fold(backend.engine, config, at(now, 2))
    assert anomaly_kinds(backend, event_id=early) == ["unknown_reference"]
    record_checkout(backend.engine, donation, "tx-fast", at(now, 3))
    run_fold(backend.engine, config, at(now, 4))
    assert anomaly_kinds(backend) == []
    assert donation_row(backend, donation)["credit_event_id"] == early
    assert_same_as_rebuild(backend, config, at(now, 5))


def test_rebuild_offers_waiting_events_the_checkouts_recorded_while_it_runs(backend, now, monkeypatch):
    """A rebuild does not offer the checkouts it refolds (their transaction ids were on the donations
    before it began), but a checkout recorded after it began can resolve an event it already folded."""
    monkeypatch.setattr("jobs.rebuild.REBUILD_BATCH", 2)
    config = backend.config(**{"fold.batch_size": 2})
    donation, _ = add_donation(backend.engine, now)
    other, other_reference = add_donation(backend.engine, now)
    early = success(backend.engine, "RHCI-DN-0-20000101000000", at(now, 1), transaction_id="tx-late")
    success(backend.engine, other_reference, at(now, 1))
    success(backend.engine, other_reference, at(now, 1))  # the second batch: this event, then the checkout
    recorded = []

    def checkout_after_the_first_batch(position: int, _high: int) -> None:
        if not recorded:
            recorded.append(record_checkout(backend.engine, donation, "tx-late", at(now, 3)))

    rebuild(backend.engine, config, at(now, 2), progress=checkout_after_the_first_batch)
    assert recorded and recorded[0] > early
    assert anomaly_kinds(backend) == []
    assert donation_row(backend, donation)["credit_event_id"] == early
    assert donation_row(backend, other)["status"] == "COMPLETED"
    assert_same_as_rebuild(backend, config, at(now, 5))


def test_waiting_events_are_read_again_in_every_batch(backend, now):
    """A fold run keeps the waiting events' keys across its batches; an event another fold left waiting
    between two of its batches must still be offered the next batch's checkouts."""
    config = backend.config(**{"fold.batch_size": 1})
    success(backend.engine, "RHCI-DN-0-20000101000000", at(now, 1), transaction_id="tx-zero")
    run_fold(backend.engine, config, at(now, 2))
    first, first_reference = add_donation(backend.engine, now)
    success(backend.engine, first_reference, at(now, 3))
    injected = {}

    def another_fold_between_batches(position: int, _high: int) -> None:
        if injected:
            return
        injected["event"] = success(backend.engine, "RHCI-DN-0-20000101000001", at(now, 4), transaction_id="tx-one")
        run_fold(backend.engine, config, at(now, 5), max_batches=1)
        assert anomaly_kinds(backend, event_id=injected["event"]) == ["unknown_reference"]
        injected["donation"], _ = add_donation(backend.engine, now)
        record_checkout(backend.engine, injected["donation"], "tx-one", at(now, 6))

    run_fold(backend.engine, config, at(now, 7), progress=another_fold_between_batches)
    assert anomaly_kinds(backend, event_id=injected["event"]) == []
    assert donation_row(backend, injected["donation"])["credit_event_id"] == injected["event"]
    assert donation_row(backend, first)["status"] == "COMPLETED"
    assert_same_as_rebuild(backend, config, at(now, 8))


def test_unknown_reference_lookup_with_every_donation_as_a_key(sqlite_backend, now):
    """The first fold (and the fold after a rebuild) offers *every* donation to the waiting unknown
    references. That lookup must stay under SQLite's bound-parameter limit (250000 on this build, 32766
    upstream): unchunked, it failed with "too many SQL variables" from ~42000 donations here (~5500 on a
    default build), and no fold could run at all."""
    many = 45_000
    reference = "RHCI-DN-44999-20260114093000"
    event = success(sqlite_backend.engine, reference, at(now, 1), transaction_id="tx-44999")
    run_fold(sqlite_backend.engine, sqlite_backend.config(), at(now, 2))
    assert anomaly_kinds(sqlite_backend, event_id=event) == ["unknown_reference"]
    references = {f"RHCI-DN-{i}-20260114093000" for i in range(many)}
    transactions = {f"tx-{i}" for i in range(many)}
    with transaction(sqlite_backend.engine) as session:
        store = SqlFoldStore(session)
        assert store.waiting_matching(offered_keys(range(1, many), references, transactions)) == [event]
        assert store.waiting_matching(offered_keys((), {"RHCI-DN-1-20260114093000"})) == []

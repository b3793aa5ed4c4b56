"""The invariants are written once (pipeline.invariants, over a Snapshot) and run in SQL on the fold's hot path
(SqlFoldStore.invariant_violations). Both must give the same answer on the same database: a clean one, and
one with each invariant broken by a tampered row, on SQLite and on MariaDB."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import select, text

from jobs.fold import run_fold
from pipeline.db import transaction
from pipeline.invariants import violations
from pipeline.models import Donation
from pipeline.store.snapshot import live_snapshot
from pipeline.store.state import SqlFoldStore
from tests.builders import add_donation, add_patient, append, at, callback_body

# each breaks an invariant (two, where a credit changes under its patient) of the first patient or its donations
TAMPERS = {
    "received_not_sum": ("UPDATE patients SET funding_received = funding_received + 7 WHERE id = :patient", "patient"),
    "credit_not_completed": ("UPDATE donations SET status = 'FAILED' WHERE id = :donation", "donation"),
    "credit_other_amount": ("UPDATE funding_credits SET amount = amount + 1 WHERE donation_id = :donation", "both"),
    "completed_without_credit": ("UPDATE donations SET status = 'COMPLETED' WHERE id = :pending", "donation"),
    "credit_removed": ("DELETE FROM funding_credits WHERE donation_id = :donation", "both"),
}


def _folded(backend, now) -> dict[str, int]:
    patient = add_patient(backend.engine, now, required="30000")
    add_patient(backend.engine, now, required="5000", name="Baraka")  # no credits: its sum is 0
    donation, reference = add_donation(backend.engine, now, patient_id=patient)
    other, other_reference = add_donation(backend.engine, now, patient_id=patient, amount="10000")
    pending, _ = add_donation(backend.engine, now, patient_id=patient, amount="500")
    general, general_reference = add_donation(backend.engine, now, amount="700")  # the general fund: no patient
    append(backend.engine, callback_body(reference, transaction_id="tx-1"), at(now, 1))
    append(backend.engine, callback_body(other_reference, amount="10000", transaction_id="tx-2"), at(now, 2))
    append(backend.engine, callback_body(general_reference, amount="700", transaction_id="tx-3"), at(now, 3))
    run_fold(backend.engine, backend.config(), now)
    return {"patient": patient, "donation": donation, "pending": pending, "other": other, "general": general}


def _both(backend) -> tuple[list[str], list[str], list[str]]:
    """(the SQL fast path over everything, the same over every id, pipeline.invariants over a live snapshot)."""
    with transaction(backend.engine) as session:
        store = SqlFoldStore(session)
        everything = store.invariant_violations()
        patients = [row[0] for row in session.execute(text("SELECT id FROM patients"))]
        amounts = dict(session.execute(select(Donation.id, Donation.patient_amount)).all())
        scoped = store.invariant_violations(patient_ids=patients, donation_ids=list(amounts))
        snapshot = violations(live_snapshot(session), amounts)
    return sorted(everything), sorted(scoped), sorted(snapshot)


def test_a_clean_database_has_no_violations_either_way(backend, now):
    ids = _folded(backend, now)
    assert backend.scalar("SELECT COUNT(*) FROM funding_credits") == 3
    assert backend.scalar("SELECT status FROM donations WHERE id = :id", id=ids["general"]) == "COMPLETED"
    assert _both(backend) == ([], [], [])


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_each_broken_invariant_is_found_the_same_way_by_both(backend, now, tamper):
    ids = _folded(backend, now)
    sql, broken = TAMPERS[tamper]
    with backend.engine.begin() as connection:
        connection.execute(text(sql), ids)
    everything, scoped, snapshot = _both(backend)
    assert everything == scoped == snapshot
    expected = {
        "patient": [f"patient {ids['patient']}:"],
        "donation": [f"donation {ids['pending' if tamper == 'completed_without_credit' else 'donation']}:"],
        "both": [f"patient {ids['patient']}:", f"donation {ids['donation']}:"],
    }[broken]
    assert [line.split(" funding_received")[0].split(" status")[0] for line in snapshot] == sorted(expected)


def test_the_messages_name_the_amounts_in_cents(backend, now):
    ids = _folded(backend, now)
    with backend.engine.begin() as connection:
        connection.execute(text("DELETE FROM funding_credits WHERE donation_id = :donation"), ids)
    _, _, snapshot = _both(backend)
    assert snapshot == [
        f"donation {ids['donation']}: status COMPLETED, credit None, patient_amount 25000.00",
        f"patient {ids['patient']}: funding_received {Decimal('35000.00')} != sum of credits {Decimal('10000.00')}",
    ]

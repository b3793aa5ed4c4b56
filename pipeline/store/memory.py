"""An in-memory fold target for `rebuild --check` and `rebuild --as-of`: reads the live log, writes nothing.

It offers the FoldStore methods (pipeline.fold_batch) SqlFoldStore offers, over dicts, and produces a
Snapshot (pipeline.snapshot) that can be compared with the live state's (pipeline.store.snapshot).
tests/test_fold_store_contract.py runs the same tests on both.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.fold import AnomalyRecord, Credit, DonationState, PatientStatus
from pipeline.models import Donation, Patient
from pipeline.patient_funding import PatientTotals
from pipeline.resolution import WAITING_KINDS, DonationIndex, Key
from pipeline.snapshot import Snapshot
from pipeline.store.fold_rows import STATIC_COLUMNS
from pipeline.store.funding import PatientRow
from pipeline.store.state import SqlFoldStore


class MemoryFoldStore:
    def __init__(self, session: Session, as_of: datetime | None = None, donation_high: int | None = None):
        """donation_high (rebuild --check): events resolve only to donations the live fold had already
        seen (checkpoint.donation_high); a donation created since then is offered to waiting
        unknown_reference events by the next fold, not yet. Its row still appears, PENDING, in the snapshot."""
        self.reader = SqlFoldStore(session)
        self.as_of = as_of
        donations = select(*STATIC_COLUMNS)
        patients = select(Patient.id, Patient.funding_required)
        if as_of is not None:
            donations = donations.where(Donation.created_at <= as_of)
            patients = patients.where(Patient.created_at <= as_of)
        self.states: dict[int, DonationState] = {row[0]: DonationState(*row) for row in session.execute(donations)}
        self.index = DonationIndex()
        for state in self.states.values():
            if donation_high is None or state.id <= donation_high:
                self.index.add(state)
        self.patient_rows = {
            patient_id: PatientRow(patient_id, required, Decimal("0"), PatientStatus.FUNDING, None)
            for patient_id, required in session.execute(patients)
        }
        self.credits: dict[int, Credit] = {}
        self.anomalies: dict[int | None, list[AnomalyRecord]] = defaultdict(list)
        self.waiting: dict[int, AnomalyRecord] = {}  # unknown_reference and reference_conflict, by event
        self.applied: dict[int, list[int]] = defaultdict(list)  # donation -> events applied to it
        self.waiting_keys: dict[int, set[tuple[str, str]]] = {}  # event -> (column, value) it waits on

    # -- reading the log --------------------------------------------------------------------
    def events_after(self, position: int, limit: int, until_id: int | None = None):
        return self.reader.events_after(position, limit, received_until=self.as_of, until_id=until_id)

    def events_by_ids(self, ids: Iterable[int]):
        return self.reader.events_by_ids(ids)

    # -- the FoldStore methods --------------------------------------------------------------
    def donations_matching(self, wanted: dict[str, set]) -> dict[int, DonationState]:
        found: dict[int, DonationState] = {}
        for column, values in wanted.items():
            for value in values:
                donation_id = self.index.find(Key(column, column, value, True))
                if donation_id is not None and donation_id not in found:
                    found[donation_id] = self.states[donation_id].copy()
        return found

    def applied_events(self, donation_ids: Iterable[int]) -> dict[int, list[int]]:
        return {
            donation_id: sorted(self.applied[donation_id])
            for donation_id in donation_ids
            if donation_id in self.applied
        }

    def add_applied(self, pairs: Sequence[tuple[int, int]]) -> None:
        for event_id, donation_id in pairs:
            self.applied[donation_id].append(event_id)

    def set_waiting(self, dropped, added) -> None:
        """Kept as SqlFoldStore keeps them (values cut at 255 like the column). A fold in memory never retries
        them: every donation exists from the start, so no donation appears for a waiting event."""
        for event_id in dropped:
            self.waiting_keys.pop(event_id, None)
        for event, keys in added:
            self.waiting_keys[event.id] = {(key.column, str(key.value)[:255]) for key in keys}

    def waiting_matching(self, offered) -> list[int]:
        wanted = {(column, str(value)) for column, value in offered}
        return sorted(event_id for event_id, keys in self.waiting_keys.items() if keys & wanted)

    def write_donations(self, states: Iterable[DonationState]) -> None:
        for state in states:
            self.states[state.id] = state

    def add_anomalies(self, anomalies: Sequence[AnomalyRecord]) -> None:
        for record in anomalies:
            if record.kind in WAITING_KINDS:
                self.waiting[record.event_id] = record
            else:
                self.anomalies[record.donation_id].append(record)

    def drop_anomalies(self, donation_ids: Iterable[int] = (), waiting_events: Iterable[int] = ()) -> None:
        for donation_id in donation_ids:
            self.anomalies.pop(donation_id, None)
        for event_id in waiting_events:
            self.waiting.pop(event_id, None)

    def apply_credit_changes(self, changes: Sequence[tuple[Credit | None, Credit | None]]) -> None:
        for old, new in changes:
            if new is None:
                self.credits.pop(old.donation_id, None)
            else:
                self.credits[new.donation_id] = new

    def patients(self, ids: Iterable[int]) -> dict[int, PatientRow]:
        return {patient_id: self.patient_rows[patient_id] for patient_id in ids if patient_id in self.patient_rows}

    def credits_of_donations(self, ids: Iterable[int]) -> dict[int, Credit]:
        return {donation_id: self.credits[donation_id] for donation_id in ids if donation_id in self.credits}

    def credits_of_patients(self, ids: Iterable[int]) -> dict[int, list[Credit]]:
        wanted = set(ids)
        found: dict[int, list[Credit]] = defaultdict(list)
        for credit in self.credits.values():
            if credit.patient_id in wanted:
                found[credit.patient_id].append(credit)
        return found

    def write_patients(self, totals: dict[int, PatientTotals]) -> None:
        for patient_id, total in totals.items():
            row = self.patient_rows[patient_id]
            row.funding_received, row.status, row.fully_funded_at = (
                total.funding_received,
                total.status,
                total.fully_funded_at,
            )

    # -- result -----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        return Snapshot.build(
            donations=self.states.values(),
            credits=self.credits.values(),
            patients=((p.id, p.funding_received, p.status, p.fully_funded_at) for p in self.patient_rows.values()),
            anomalies=[*(record for records in self.anomalies.values() for record in records), *self.waiting.values()],
        )

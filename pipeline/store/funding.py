"""SqlFoldStore's funding role: funding credits (the ledger) and patient totals."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import delete

from pipeline.fold import Credit
from pipeline.models import FundingCredit
from pipeline.patient_funding import PatientTotals
from pipeline.store.driver import chunks
from pipeline.store.fold_rows import Rows


@dataclass
class PatientRow:
    id: int
    funding_required: Decimal
    funding_received: Decimal
    status: str
    fully_funded_at: datetime | None


class FundingRows(Rows):
    def apply_credit_changes(self, changes: Sequence[tuple[Credit | None, Credit | None]]) -> None:
        raw = self.raw
        money, when = raw.bind_money, raw.bind_when
        removed = [old.donation_id for old, new in changes if old is not None and new is None]
        added = [
            (new.donation_id, new.patient_id, money(new.amount), new.event_id, when(new.credited_at))
            for old, new in changes
            if old is None and new is not None
        ]
        moved = [
            (new.event_id, when(new.credited_at), money(new.amount), new.patient_id, new.donation_id)
            for old, new in changes
            if old is not None and new is not None and old != new
        ]
        for part in chunks(removed):
            self.session.execute(delete(FundingCredit).where(FundingCredit.donation_id.in_(part)))
        raw.many(
            f"INSERT INTO funding_credits (donation_id, patient_id, amount, event_id, credited_at) VALUES {raw.marks(5)}",
            added,
        )
        raw.update_rows(
            "funding_credits", ("event_id", "credited_at", "amount", "patient_id"), moved, key="donation_id"
        )

    def patients(self, ids: Iterable[int]) -> dict[int, PatientRow]:
        raw = self.raw
        found: dict[int, PatientRow] = {}
        rows = raw.fetch_in(
            "SELECT id, funding_required, funding_received, status, fully_funded_at FROM patients WHERE id IN ",
            sorted(set(ids)),
        )
        for patient_id, required, received, status, fully_funded_at in rows:
            found[patient_id] = PatientRow(
                patient_id, raw.money(required), raw.money(received), status, raw.when(fully_funded_at)
            )
        return found

    def credits_of_donations(self, ids: Iterable[int]) -> dict[int, Credit]:
        """The stored credit of each of these donations that has one."""
        raw = self.raw
        rows = raw.fetch_in(
            "SELECT donation_id, patient_id, amount, event_id, credited_at FROM funding_credits WHERE donation_id IN ",
            sorted(set(ids)),
        )
        return {
            donation_id: Credit(donation_id, patient_id, raw.money(amount), event_id, raw.when(credited_at))
            for donation_id, patient_id, amount, event_id, credited_at in rows
        }

    def credits_of_patients(self, ids: Iterable[int]) -> dict[int, list[Credit]]:
        raw = self.raw
        found: dict[int, list[Credit]] = {}
        rows = raw.fetch_in(
            "SELECT donation_id, patient_id, amount, event_id, credited_at FROM funding_credits WHERE patient_id IN ",
            sorted(set(ids)),
        )
        for donation_id, patient_id, amount, event_id, credited_at in rows:
            found.setdefault(patient_id, []).append(
                Credit(donation_id, patient_id, raw.money(amount), event_id, raw.when(credited_at))
            )
        return found

    def write_patients(self, totals: dict[int, PatientTotals]) -> None:
        raw = self.raw
        rows = [
            (raw.bind_money(t.funding_received), t.status, raw.bind_when(t.fully_funded_at), patient_id)
            for patient_id, t in totals.items()
        ]
        raw.update_rows("patients", ("funding_received", "status", "fully_funded_at"), rows)

"""SqlFoldStore's invariants role: the SQL fast path of pipeline.invariants, for the rows a fold batch touched.

The rules and their messages are pipeline.invariants'; this runs them in SQL so a batch need not read
every credit. tests/test_invariants_agree.py checks that it and pipeline.invariants.violations agree.
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.invariants import donation_problem, patient_problem
from pipeline.store.driver import chunks
from pipeline.store.fold_rows import Rows

_PATIENTS = (
    "SELECT p.id, p.funding_received, "
    "(SELECT COALESCE(SUM(c.amount), 0) FROM funding_credits c WHERE c.patient_id = p.id) FROM patients p"
)
# pipeline.invariants.credit_holds, negated: a credit on a donation not COMPLETED or of another amount, or a
# COMPLETED donation without one
_DONATIONS = (
    "SELECT d.id, d.status, d.patient_amount, c.amount FROM donations d "
    "LEFT OUTER JOIN funding_credits c ON c.donation_id = d.id "
    "WHERE ((c.id IS NOT NULL AND (d.status != 'COMPLETED' OR c.amount != d.patient_amount)) "
    "OR (c.id IS NULL AND d.status = 'COMPLETED'))"
)
DONATION_LIMIT = 20  # donation rows listed per query: the fold shows the first five, the report lists them all


class InvariantRows(Rows):
    def invariant_violations(
        self, patient_ids: Iterable[int] | None = None, donation_ids: Iterable[int] | None = None
    ) -> list[str]:
        """pipeline.invariants' checks on the tables. With ids given (a fold batch), only those patients and
        donations are checked; with neither, every one."""
        raw = self.raw
        if patient_ids is None and donation_ids is None:
            parts = {"patients": [None], "donations": [None]}
        else:
            parts = {
                "patients": chunks(sorted(set(patient_ids or ()))),
                "donations": chunks(sorted(set(donation_ids or ()))),
            }
        problems: list[str] = []
        # Stored values are compared as stored (integer cents on SQLite, DECIMAL on MySQL): exact either way.
        for part in parts["patients"]:
            sql, params = (
                (_PATIENTS, ()) if part is None else (f"{_PATIENTS} WHERE p.id IN {raw.marks(len(part))}", part)
            )
            for patient_id, received, total in raw.fetch(sql, params):
                if received != total:
                    problems.append(patient_problem(patient_id, raw.money(received), raw.money(total)))
        for part in parts["donations"]:
            sql, params = (
                (_DONATIONS, ()) if part is None else (f"{_DONATIONS} AND d.id IN {raw.marks(len(part))}", part)
            )
            for donation_id, status, patient_amount, credited in raw.fetch(f"{sql} LIMIT {DONATION_LIMIT}", params):
                problems.append(donation_problem(donation_id, status, raw.money(credited), raw.money(patient_amount)))
        return problems

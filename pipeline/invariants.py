"""The fold's invariants, written once, over a Snapshot (pipeline.snapshot).

- each patient's funding_received equals the sum of its credits;
- only a COMPLETED donation has a credit, and it has exactly one, of its patient_amount.

The report (as of an instant) and `rebuild --check` run `violations` on a snapshot. The fold's batch runs
the same checks in SQL over just the rows it touched (pipeline.store.invariants_sql, the one fast path);
tests/test_invariants_agree.py holds the two to the same answers. The messages come from here for both,
and so does the error the fold raises (violation_error), which /metrics recognises in job_runs
(is_violation_error).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from decimal import Decimal

from pipeline.errors import InvariantViolation
from pipeline.fold import CENT, COMPLETED
from pipeline.snapshot import DONATION_FIELDS, Snapshot

_STATUS = DONATION_FIELDS.index("status")
ERROR_PREFIX = "fold invariant violated"  # how the fold's InvariantViolation begins (alerts grep it too)
ERROR_PROBLEMS = 5  # the problems the error names


def violation_error(problems: list[str]) -> InvariantViolation:
    """The error the fold raises when a batch breaks an invariant (its transaction is rolled back)."""
    return InvariantViolation(f"{ERROR_PREFIX}: " + "; ".join(problems[:ERROR_PROBLEMS]))


def is_violation_error(text: str | None) -> bool:
    """Whether a recorded error (job_runs.error) is violation_error's."""
    return (text or "").startswith(ERROR_PREFIX)


def credit_holds(status: str, credited: Decimal | None, patient_amount: Decimal) -> bool:
    """A donation's credit agrees with its status: patient_amount when COMPLETED, none otherwise."""
    if status == COMPLETED:
        return credited is not None and credited == patient_amount
    return credited is None


def patient_problem(patient_id: int, received, credited) -> str:
    return f"patient {patient_id}: funding_received {_cents(received)} != sum of credits {_cents(credited)}"


def donation_problem(donation_id: int, status: str, credited, patient_amount) -> str:
    return (
        f"donation {donation_id}: status {status}, credit {_cents(credited)}, patient_amount {_cents(patient_amount)}"
    )


def violations(snapshot: Snapshot, patient_amounts: Mapping[int, Decimal]) -> list[str]:
    """Every broken invariant in `snapshot`, patients first, each list in id order. `patient_amounts` is
    each donation's patient_amount (a static fact the snapshot does not carry)."""
    problems: list[str] = []
    sums: dict[int, Decimal] = defaultdict(Decimal)
    for patient_id, amount, _, _ in snapshot.credits.values():
        if patient_id is not None:
            sums[patient_id] += Decimal(amount)
    for patient_id, (received, _, _) in sorted(snapshot.patients.items()):
        total = sums.get(patient_id, Decimal("0"))
        if Decimal(received) != total:
            problems.append(patient_problem(patient_id, received, total))
    for donation_id, values in sorted(snapshot.donations.items()):
        status, credit = values[_STATUS], snapshot.credits.get(donation_id)
        credited = None if credit is None else Decimal(credit[1])
        if not credit_holds(status, credited, Decimal(patient_amounts[donation_id])):
            problems.append(donation_problem(donation_id, status, credited, patient_amounts[donation_id]))
    return problems


def _cents(value) -> Decimal | None:
    return None if value is None else Decimal(value).quantize(CENT)

"""A patient's funding from its credits: the sum, and FULLY_FUNDED from the credit that crosses the target.

Pure like pipeline/fold.py, whose credits (credit_of) it sums; pipeline/fold_batch.py calls it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from pipeline.fold import Credit, PatientStatus


class PatientTotals(NamedTuple):
    funding_received: Decimal
    status: str
    fully_funded_at: datetime | None


def patient_totals(funding_required: Decimal, credits: Iterable[Credit]) -> PatientTotals:
    """Sum of credits; FULLY_FUNDED from the credit that crosses funding_required, in (credited_at, donation_id) order."""
    received = Decimal("0")
    fully_funded_at = None
    for credit in sorted(credits, key=lambda c: (c.credited_at, c.donation_id)):
        received += credit.amount
        if fully_funded_at is None and received >= funding_required:
            fully_funded_at = credit.credited_at
    if fully_funded_at is not None:
        return PatientTotals(received, PatientStatus.FULLY_FUNDED, fully_funded_at)
    return PatientTotals(received, PatientStatus.FUNDING, None)


def patient_update(
    funding_required: Decimal,
    received: Decimal,
    status: str,
    fully_funded_at: datetime | None,
    changes: Iterable[tuple[Credit | None, Credit | None]],
) -> PatientTotals | None:
    """New totals from credit changes (old, new) without reading every credit, or None when only a full
    recompute (patient_totals over all credits) can place fully_funded_at: the patient crosses
    funding_required, or a change lands at or before the current crossing point."""
    delta = Decimal("0")
    touches_crossing = False
    for old, new in changes:
        delta += (new.amount if new else Decimal("0")) - (old.amount if old else Decimal("0"))
        for credit in (old, new):
            if credit is not None and fully_funded_at is not None and credit.credited_at <= fully_funded_at:
                touches_crossing = True
    received += delta
    if received < funding_required:
        return PatientTotals(received, PatientStatus.FUNDING, None)
    if status == PatientStatus.FULLY_FUNDED and not touches_crossing:
        return PatientTotals(received, status, fully_funded_at)
    return None

"""SqlFoldStore's reset role: every derived column and table back to its state before event 0 (a rebuild)."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import delete, update

from pipeline.fold import DERIVED_FIELDS, DonationState, PatientStatus
from pipeline.models import (
    Anomaly,
    Donation,
    DonationEvent,
    EventCount,
    FoldCheckpoint,
    FundingCredit,
    Patient,
    WaitingKey,
)
from pipeline.store.fold_rows import Rows

_DERIVED_DEFAULTS = {name: getattr(DonationState(0, None, Decimal(0), Decimal(0)), name) for name in DERIVED_FIELDS}


class ResetRows(Rows):
    def reset_derived(self, checkpoint_name: str) -> None:
        """Every derived column and table back to its state before event 0."""
        session = self.session
        session.execute(delete(FundingCredit))
        session.execute(delete(Anomaly))
        session.execute(delete(DonationEvent))
        session.execute(delete(WaitingKey))
        session.execute(delete(EventCount))
        session.execute(update(Donation).values(**_DERIVED_DEFAULTS))
        session.execute(
            update(Patient).values(funding_received=Decimal("0"), status=PatientStatus.FUNDING, fully_funded_at=None)
        )
        session.execute(delete(FoldCheckpoint).where(FoldCheckpoint.name == checkpoint_name))

"""The live tables as a Snapshot (pipeline.snapshot): what `rebuild --check` compares with its rebuild in memory."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.fold import AnomalyRecord, Credit, DonationState
from pipeline.models import Anomaly, FundingCredit, Patient
from pipeline.snapshot import Snapshot
from pipeline.store.fold_rows import STATE_COLUMNS


def live_snapshot(session: Session) -> Snapshot:
    donations = (DonationState(*row) for row in session.execute(select(*STATE_COLUMNS)))
    credits = (
        Credit(*row)
        for row in session.execute(
            select(
                FundingCredit.donation_id,
                FundingCredit.patient_id,
                FundingCredit.amount,
                FundingCredit.event_id,
                FundingCredit.credited_at,
            )
        )
    )
    patients = session.execute(select(Patient.id, Patient.funding_received, Patient.status, Patient.fully_funded_at))
    anomalies = (
        AnomalyRecord(*row)
        for row in session.execute(select(Anomaly.event_id, Anomaly.donation_id, Anomaly.kind, Anomaly.detail))
    )
    return Snapshot.build(donations, credits, patients, anomalies)

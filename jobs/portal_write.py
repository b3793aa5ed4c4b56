"""`azamrecon portal apply` (docs/portal.md): every result that differs into the portal's rows, after a rebuild.

The rule is pipeline.portal_write.write_portal; this job owns its short transactions.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from pipeline.config import Config
from pipeline.db import transaction
from pipeline.models import Patient, PortalDonationSeen
from pipeline.portal_facts import OWNED
from pipeline.portal_write import WriteReport, write_portal
from pipeline.store.checkpoint import CHECKPOINT
from pipeline.store.state import SqlFoldStore


def apply_portal(engine, config: Config, now: datetime, batch_size: int = 500) -> WriteReport:
    """Every owned donation's and every patient's result into the portal (after a rebuild): the state is
    already computed aside (azamrecon's own tables), so only differences are written, in short
    compare-and-set batches that each hold the fold lock for a moment, never the portal for long."""
    report = WriteReport()
    with transaction(engine) as session:
        donation_ids = list(
            session.scalars(select(PortalDonationSeen.donation_id).where(PortalDonationSeen.owner == OWNED))
        )
        patient_ids = list(session.scalars(select(Patient.id)))
    for start in range(0, max(len(donation_ids), len(patient_ids)), batch_size):
        with transaction(engine, immediate=True) as session:
            SqlFoldStore(session).lock_checkpoint(CHECKPOINT)
            write_portal(
                session,
                config,
                donation_ids[start : start + batch_size],
                patient_ids[start : start + batch_size],
                now,
                report,
            )
    return report

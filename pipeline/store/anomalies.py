"""SqlFoldStore's anomalies role: what a batch raises, and what a replay or a retry raises again."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import delete

from pipeline.fold import AnomalyRecord
from pipeline.models import Anomaly
from pipeline.resolution import WAITING_KINDS
from pipeline.store.driver import chunks
from pipeline.store.fold_rows import Rows


class AnomalyRows(Rows):
    def add_anomalies(self, anomalies: Sequence[AnomalyRecord]) -> None:
        if anomalies:
            self.raw.many(
                f"INSERT INTO anomalies (event_id, donation_id, kind, detail) VALUES {self.raw.marks(4)}", anomalies
            )

    def drop_anomalies(self, donation_ids: Iterable[int] = (), waiting_events: Iterable[int] = ()) -> None:
        """Anomalies a replay of these donations, or a new look at these waiting events, raises again (or no
        longer raises). A waiting event's anomaly may name a donation it was not applied to: a replay keeps it."""
        for part in chunks(sorted(set(donation_ids))):
            self.session.execute(
                delete(Anomaly).where(Anomaly.donation_id.in_(part), Anomaly.kind.not_in(WAITING_KINDS))
            )
        for part in chunks(sorted(set(waiting_events))):
            self.session.execute(delete(Anomaly).where(Anomaly.kind.in_(WAITING_KINDS), Anomaly.event_id.in_(part)))

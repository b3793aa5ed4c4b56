"""SqlFoldStore's events role: reading the log in id order, the applied-events ledger, the running counts."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import func, select

from pipeline.fold import FoldEvent
from pipeline.models import PaymentEvent
from pipeline.store.fold_rows import EVENT_SELECT, Rows

_ID_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # engine -> auto_increment_increment


class EventRows(Rows):
    def events_after(
        self, position: int, limit: int, received_until: datetime | None = None, until_id: int | None = None
    ) -> list[FoldEvent]:
        raw = self.raw
        sql, params = f"{EVENT_SELECT} WHERE id > {raw.mark}", [position]
        if until_id is not None:
            sql += f" AND id <= {raw.mark}"
            params.append(until_id)
        if received_until is not None:
            sql += f" AND received_at <= {raw.mark}"
            params.append(raw.bind_when(received_until))
        sql += f" ORDER BY id LIMIT {raw.mark}"
        params.append(int(limit))
        return raw.events(raw.fetch(sql, params))

    def events_by_ids(self, ids: Iterable[int]) -> list[FoldEvent]:
        ids = sorted(set(ids))
        found = self.raw.events(self.raw.fetch_in(f"{EVENT_SELECT} WHERE id IN ", ids))
        return sorted(found, key=lambda event: event.id)

    def id_step(self) -> int:
        """How far apart consecutive auto-increment ids are (MySQL's auto_increment_increment; 1 on SQLite).
        Read once per engine: a server setting, and the scheduler folds twice a second."""
        if self.raw.sqlite:
            return 1
        engine = self.connection.engine
        step = _ID_STEPS.get(engine)
        if step is None:
            step = _ID_STEPS[engine] = max(1, int(self.raw.fetch("SELECT @@auto_increment_increment")[0][0]))
        return step

    def max_event_id(self) -> int:
        return self.session.scalar(select(func.max(PaymentEvent.id))) or 0

    def count_events(self, events: Iterable[FoldEvent]) -> None:
        """Add a batch's events to event_counts (source, auth), under the fold lock like the rest of the batch."""
        raw = self.raw
        counts: dict[tuple[str, str], int] = {}
        for event in events:
            counts[(event.source, event.auth)] = counts.get((event.source, event.auth), 0) + 1
        for (source, auth), count in counts.items():
            if not raw.run(
                f"UPDATE event_counts SET count = count + {raw.mark} WHERE source = {raw.mark} AND auth = {raw.mark}",
                [count, source, auth],
            ):
                raw.execute(
                    f"INSERT INTO event_counts (source, auth, count) VALUES {raw.marks(3)}", [source, auth, count]
                )

    def applied_events(self, donation_ids: Iterable[int]) -> dict[int, list[int]]:
        """The events applied to each of these donations, in id order (an exact replay refolds them)."""
        found: dict[int, list[int]] = {}
        for donation_id, event_id in self.raw.fetch_in(
            "SELECT donation_id, event_id FROM donation_events WHERE donation_id IN ", sorted(set(donation_ids))
        ):
            found.setdefault(donation_id, []).append(event_id)
        for ids in found.values():
            ids.sort()
        return found

    def add_applied(self, pairs: Sequence[tuple[int, int]]) -> None:
        """(event id, donation id) of the events a batch applied."""
        self.raw.many(f"INSERT INTO donation_events (event_id, donation_id) VALUES {self.raw.marks(2)}", pairs)

"""SqlFoldStore's waiting role: events no donation matched yet, and the lookup keys they wait on (waiting_keys)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from pipeline.fold import FoldEvent
from pipeline.resolution import ID, REFERENCE, TRANSACTION, Key
from pipeline.store.driver import chunks
from pipeline.store.fold_rows import Rows


class WaitingRows(Rows):
    def waiting_matching(self, offered: set[tuple[str, Any]]) -> list[int]:
        """The waiting events with a key among the offered (column, value) pairs, through waiting_keys'
        index: the cost follows what is offered, not how many events wait."""
        raw = self.raw
        by_column: dict[str, set[str]] = {}
        for column, value in offered:
            by_column.setdefault(column, set()).add(str(value))
        found: set[int] = set()
        for column, values in by_column.items():
            for part in chunks(sorted(values)):
                sql = f"SELECT event_id FROM waiting_keys WHERE key_column = {raw.mark} AND key_value IN {raw.marks(len(part))}"
                found.update(row[0] for row in raw.fetch(sql, [column, *part]))
        return sorted(found)

    def set_waiting(self, dropped: Iterable[int], added: Sequence[tuple[FoldEvent, tuple[Key, ...]]]) -> None:
        """Events no longer waiting (retried), then events now waiting with their lookup keys."""
        raw = self.raw
        for part in chunks(sorted(set(dropped))):
            raw.run(f"DELETE FROM waiting_keys WHERE event_id IN {raw.marks(len(part))}", part)
        rows = [
            (event.id, column, value[:255], raw.bind_when(event.received_at))
            for event, keys in added
            for column, value in sorted({(key.column, str(key.value)) for key in keys})
        ]
        raw.many(f"INSERT INTO waiting_keys (event_id, key_column, key_value, received_at) VALUES {raw.marks(4)}", rows)

    def retire_waiting(self, received_before: datetime) -> int:
        """Stop offering new donations to events that have waited since before `received_before`; their
        anomaly stays, and a rebuild reconsiders them."""
        return self.raw.run(
            "DELETE FROM waiting_keys WHERE received_at < " + self.raw.mark, [self.raw.bind_when(received_before)]
        )


def offered_keys(
    ids: Iterable[int] = (), references: Iterable[str] = (), transactions: Iterable[str] = ()
) -> set[tuple[str, Any]]:
    """Donation facts as the (column, value) pairs waiting_matching takes."""
    offered = {(ID, donation_id) for donation_id in ids}
    offered.update((REFERENCE, reference) for reference in references)
    offered.update((TRANSACTION, transaction) for transaction in transactions)
    return offered

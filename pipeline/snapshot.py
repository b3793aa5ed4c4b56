"""Derived state as comparable values: what `rebuild --check` diffs, `rebuild --as-of` exports and
pipeline.invariants checks. Pure: pipeline.store.snapshot.live_snapshot reads one from the tables, and
pipeline.store.memory.MemoryFoldStore.snapshot builds one from a fold in memory."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from pipeline.fold import CENT, DERIVED_FIELDS, AnomalyRecord, Credit, DonationState

# What a person compares; the remaining derived fields (aggregates, event_ids) follow from the log.
DONATION_FIELDS = ("status", "completed_at", "credit_event_id", "review_reason", "needs_check") + tuple(
    name
    for name in DERIVED_FIELDS
    if name not in ("status", "completed_at", "credit_event_id", "review_reason", "needs_check")
)


@dataclass
class Snapshot:
    donations: dict[int, tuple]
    credits: dict[int, tuple]
    patients: dict[int, tuple]
    anomalies: Counter

    @classmethod
    def build(
        cls,
        donations: Iterable[DonationState],
        credits: Iterable[Credit],
        patients: Iterable[tuple],
        anomalies: Iterable[AnomalyRecord],
    ) -> Snapshot:
        return cls(
            donations={state.id: tuple(_norm(getattr(state, name)) for name in DONATION_FIELDS) for state in donations},
            credits={c.donation_id: (c.patient_id, _norm(c.amount), c.event_id, _norm(c.credited_at)) for c in credits},
            patients={row[0]: tuple(_norm(value) for value in row[1:]) for row in patients},
            anomalies=Counter((a.event_id, a.donation_id, a.kind, a.detail) for a in anomalies),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "donations": {
                str(k): dict(zip(DONATION_FIELDS, v, strict=True)) for k, v in sorted(self.donations.items())
            },
            "credits": {
                str(k): dict(zip(("patient_id", "amount", "event_id", "credited_at"), v, strict=True))
                for k, v in sorted(self.credits.items())
            },
            "patients": {
                str(k): dict(zip(("funding_received", "status", "fully_funded_at"), v, strict=True))
                for k, v in sorted(self.patients.items())
            },
            "anomalies": [
                dict(zip(("event_id", "donation_id", "kind", "detail"), key, strict=True))
                for key in sorted(self.anomalies.elements(), key=repr)
            ],
        }


def _norm(value: Any) -> Any:
    if isinstance(value, Enum):  # a Status the fold set compares (and prints) as the string a table holds
        return value.value
    if isinstance(value, Decimal):
        return str(value.quantize(CENT))
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bool):
        return int(value)
    return value


def differences(live: Snapshot, rebuilt: Snapshot, limit: int = 1000) -> list[str]:
    """Every difference, one line each, live first: donation fields, credits, patient totals, anomalies."""
    lines: list[str] = []
    for donation_id in sorted(live.donations.keys() | rebuilt.donations.keys()):
        have, want = live.donations.get(donation_id), rebuilt.donations.get(donation_id)
        if have == want:
            continue
        if have is None or want is None:
            lines.append(
                f"donation {donation_id}: live {'absent' if have is None else 'present'}, rebuild {'absent' if want is None else 'present'}"
            )
            continue
        for name, a, b in zip(DONATION_FIELDS, have, want, strict=True):
            if a != b:
                lines.append(f"donation {donation_id} {name}: live {a!r} rebuild {b!r}")
    for donation_id in sorted(live.credits.keys() | rebuilt.credits.keys()):
        have, want = live.credits.get(donation_id), rebuilt.credits.get(donation_id)
        if have != want:
            lines.append(f"credit for donation {donation_id}: live {have!r} rebuild {want!r}")
    for patient_id in sorted(live.patients.keys() | rebuilt.patients.keys()):
        have, want = live.patients.get(patient_id), rebuilt.patients.get(patient_id)
        if have != want:
            lines.append(f"patient {patient_id} (received, status, fully_funded_at): live {have!r} rebuild {want!r}")
    for key in sorted((live.anomalies - rebuilt.anomalies).elements(), key=repr):
        lines.append(f"anomaly only live: event {key[0]} donation {key[1]} {key[2]}: {key[3]}")
    for key in sorted((rebuilt.anomalies - live.anomalies).elements(), key=repr):
        lines.append(f"anomaly only in rebuild: event {key[0]} donation {key[1]} {key[2]}: {key[3]}")
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])

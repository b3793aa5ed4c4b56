"""Grows a realistic, hostile log for the crash and concurrency tests: duplicates, conflicts, amount
mismatches, unknown statuses, references named before their donation exists, polls and operator decisions."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta

from jobs.operator import resolve_donation
from pipeline.db import transaction
from pipeline.events import EventFields, extract_fields
from pipeline.store.events import append_events, event_row
from tests.reliability.helpers import T0, add_donation_row, add_patient_row, callback_json


@dataclass
class LogMaker:
    engine: object
    seed: int = 1
    patients: list[int] = field(default_factory=list)
    donations: list[tuple[int, str]] = field(default_factory=list)
    named_early: list[str] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    counter: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def grow(self, new_donations: int = 3, events: int = 30) -> int:
        """Add donations and events; returns how many events were appended."""
        rng = self.rng
        if not self.patients:
            self.patients = [
                add_patient_row(self.engine, f"P{i}", required=str(rng.choice([3000, 5000, 100000]))) for i in range(3)
            ]
        for _ in range(new_donations):
            self.counter += 1
            reference = (
                self.named_early.pop(0)
                if self.named_early and rng.random() < 0.7
                else f"RHCI-DN-X{self.counter}-{self.seed}"
            )
            patient = rng.choice(self.patients + [None])
            self.donations.append((add_donation_row(self.engine, reference, patient, amount="1000"), reference))
        rows = []
        operator: list[tuple[int, str]] = []
        for _ in range(events):
            self.counter += 1
            at = T0 + timedelta(seconds=self.counter + rng.uniform(-30, 30))
            donation_id, reference = rng.choice(self.donations)
            kind = rng.choices(
                [
                    "success",
                    "duplicate",
                    "failed",
                    "cancelled",
                    "mismatch",
                    "weird",
                    "unknown_ref",
                    "poll_success",
                    "poll_failed",
                    "operator",
                    "garbage",
                ],
                weights=[30, 12, 10, 4, 5, 4, 6, 6, 4, 2, 3],
            )[0]
            marker = f"m{self.seed}-{self.counter}"
            if kind == "duplicate" and self.sent:
                body = rng.choice(self.sent)
            elif kind in ("success", "failed", "cancelled", "mismatch", "weird", "duplicate"):
                status = {"failed": "FAILED", "cancelled": "Cancelled", "weird": "in-flight?"}.get(kind, "success")
                body = callback_json(reference, marker, status=status, amount="1001" if kind == "mismatch" else "1000")
            elif kind == "unknown_ref":
                later = f"RHCI-DN-LATE{self.counter}-{self.seed}"
                self.named_early.append(later)
                body = callback_json(later, marker)
            elif kind == "garbage":
                body = b'{"transactionstatus": "success", "utilityref": ' + reference.encode()  # broken JSON
            elif kind == "operator":
                operator.append((donation_id, rng.choice(["COMPLETED", "FAILED", "CANCELLED"])))
                continue
            else:
                status = "SUCCESS" if kind == "poll_success" else "FAILED"
                rows.append(
                    event_row(
                        source="poll",
                        body=b'{"data":"x"}',
                        received_at=at,
                        auth="n/a",
                        fields=EventFields(status=status, status_raw=status),
                        donation_id=donation_id,
                    )
                )
                continue
            self.sent.append(body)
            rows.append(
                event_row(
                    source="callback",
                    body=body,
                    received_at=at,
                    auth="n/a",
                    fields=extract_fields(body),
                    content_type="application/json",
                )
            )
        with transaction(self.engine) as session:
            append_events(session, rows)
        for donation_id, status in operator:
            resolve_donation(
                self.engine, donation_id, status, "reliability test", T0 + timedelta(seconds=self.counter), actor="test"
            )
        return len(rows) + len(operator)

"""Hostile traffic, fault 3: two concurrent `events ingest` of one file each printed imported=3000 although
the second one's rows were dropped by INSERT IGNORE. Each run now reports what the database inserted."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

from jobs.ingest import ingest_file
from jobs.runs import utcnow

T0 = datetime(2026, 1, 14, 9, 30, tzinfo=UTC)


def test_concurrent_imports_of_one_file_report_true_counts(backend, tmp_path):
    config = backend.config()
    path = tmp_path / "callbacks.jsonl"
    lines = [
        json.dumps(
            {
                "received_at": (T0 + timedelta(seconds=n)).isoformat(),
                "body": {
                    "transactionstatus": "success",
                    "utilityref": f"RHCI-DN-{n}-20260114093000",
                    "amount": "1000",
                    "mnoreference": f"m{n}",
                },
            }
        )
        for n in range(3000)
    ]
    path.write_text("\n".join(lines) + "\n")
    reports: list[dict] = []
    failures: list[BaseException] = []
    start = threading.Barrier(2)

    def run() -> None:
        try:
            start.wait(10)
            reports.append(ingest_file(backend.engine, config, str(path), utcnow()))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    stored = backend.scalar("SELECT COUNT(*) FROM payment_events")
    assert stored == 3000
    assert sum(report["imported"] for report in reports) == stored
    assert all(report["imported"] + report["duplicates"] == 3000 for report in reports), reports
    again = ingest_file(backend.engine, config, str(path), utcnow())
    assert (again["imported"], again["duplicates"]) == (0, 3000)

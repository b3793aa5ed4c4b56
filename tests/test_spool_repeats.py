"""The scheduler's spool ingest (every 30 s) logs a kept file's bad lines once, when it claims the file,
not at every run until an operator acts; `events ingest-spool` (retell_kept, the default) says them each time."""

from __future__ import annotations

from datetime import UTC, datetime

from loguru import logger

from jobs.spool import ingest_spool


def test_a_kept_file_is_told_once_by_the_scheduler_and_each_time_by_the_command(sqlite_backend):
    spool_dir = sqlite_backend.tmp_path / "spool"
    spool_dir.mkdir()
    (spool_dir / "callbacks-x-1-ab-1.jsonl").write_bytes(b'{"id": "a"}\nnot json\n{"v":1,"id":"torn"')
    messages: list[str] = []
    sink = logger.add(lambda message: messages.append(message.record["message"]), level="WARNING", format="{message}")
    try:
        runs = [ingest_spool(sqlite_backend.engine, spool_dir, datetime.now(UTC), retell_kept=False) for _ in range(3)]
        told_by_scheduler = list(messages)
        messages.clear()
        ingest_spool(sqlite_backend.engine, spool_dir, datetime.now(UTC))
    finally:
        logger.remove(sink)
    assert [(run["invalid"], run["torn"], run["files_deleted"]) for run in runs] == [(2, 1, 0)] * 3  # still counted
    assert len(told_by_scheduler) == 3, told_by_scheduler  # two unreadable lines and the torn one, once
    assert sum("line 2" in message for message in told_by_scheduler) == 1
    assert len(messages) == 3, messages
    assert len(list(spool_dir.iterdir())) == 1

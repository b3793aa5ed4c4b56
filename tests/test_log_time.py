"""Log lines are stamped in logging.timezone with the UTC offset (the webhook guide's `date`-based greps count
the portal team's local day), read back exactly by `events ingest`; log files 0640 in a 0750 directory."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta, timezone

import pytest
from loguru import logger

from pipeline.import_lines import parse_timestamp
from pipeline.logs import LogStamp, SizeRotation, configure_logging, day_bounds, payments
from pipeline.sections import LoggingConfig

DAR = timezone(timedelta(hours=3))
LATE_EVENING_UTC = datetime(2026, 12, 5, 22, 30, 0, 250_000, tzinfo=UTC)


@pytest.fixture(autouse=True)
def reset_logging():
    yield
    logger.remove()
    logger.configure(patcher=None, extra={})


def test_a_line_logged_at_2230_utc_carries_the_next_local_day_in_dar_es_salaam(tmp_path, monkeypatch):
    # loguru's clock (a record's time is taken before any patcher runs); the default zone is Dar es Salaam
    monkeypatch.setattr("loguru._logger.aware_now", lambda: LATE_EVENING_UTC)
    old_umask = os.umask(0o022)
    try:
        configure_logging(LoggingConfig(dir=str(tmp_path / "logs")), component="test", stderr_level=None)
        payments.info("✅ Donation 7 completed successfully")
        logger.remove()  # flushes and closes the files
    finally:
        os.umask(old_umask)
    line = (tmp_path / "logs" / "payments.log").read_text(encoding="utf-8").strip()
    assert line.startswith("2026-12-06 01:30:00.250+03:00 | INFO     | test | ✅ Donation 7 completed successfully")
    # `grep "$(date +%Y-%m-%d)"` under TZ=Africa/Dar_es_Salaam on the 6th counts it; the offset makes it exact
    assert parse_timestamp(line) == LATE_EVENING_UTC.replace(microsecond=250_000)
    assert stat.S_IMODE((tmp_path / "logs").stat().st_mode) == 0o750
    for name in ("payments.log", "app.log", "errors.log"):
        assert stat.S_IMODE((tmp_path / "logs" / name).stat().st_mode) == 0o640, name


def test_utc_on_request(tmp_path):
    configure_logging(
        LoggingConfig(dir=str(tmp_path), timezone="UTC"), component="test", stderr_level=None
    )  # sets the zone LogStamp and SizeRotation default to
    assert LogStamp()(LATE_EVENING_UTC) == "2026-12-05 22:30:00.250+00:00"
    assert LogStamp()(LATE_EVENING_UTC.timestamp()) == "2026-12-05 22:30:00.250+00:00"
    assert LogStamp(DAR)(LATE_EVENING_UTC.timestamp()) == "2026-12-06 01:30:00.250+03:00"


def test_files_start_anew_at_local_midnight(tmp_path):
    start, end = day_bounds(LATE_EVENING_UTC.timestamp(), DAR)
    assert datetime.fromtimestamp(start, UTC) == datetime(2026, 12, 5, 21, 0, tzinfo=UTC)
    assert end - start == 86400
    path = tmp_path / "payments.log"
    clock = [datetime(2026, 12, 5, 20, 0, tzinfo=UTC).timestamp()]  # 23:00 in Dar es Salaam
    rotation = SizeRotation(10_000, clock=lambda: clock[0], zone=DAR)
    with open(path, "a") as handle:
        handle.write("a line\n")
        handle.flush()
        os.utime(path, (clock[0], clock[0]))
        assert rotation("next\n", handle) is False
        clock[0] = LATE_EVENING_UTC.timestamp()  # 01:30 the next local day, still the 5th in UTC
        assert rotation("next\n", handle) is True

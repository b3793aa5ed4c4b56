"""The webhook guide's log lines from the fold job: once per real status change, the patient total after
each donation, and no secret, on a real SQLite file and a real MariaDB.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from loguru import logger

from jobs.fold import run_fold
from jobs.rebuild import rebuild
from pipeline.logs import configure_logging, payments, secrets_of
from tests.builders import add_donation, add_patient, at
from tests.fold_helpers import (
    failure,
    success,
)

# -- the webhook guide's log lines -----------------------------------------------------------------


@pytest.fixture
def logging_reset():
    yield
    logger.remove()
    logger.configure(patcher=None, extra={})


SECRET = "Pw-9f3c-not-for-logs"


def test_funding_line_gives_the_total_after_each_donation_of_a_batch(backend, now, logging_reset):
    config = backend.config()
    configure_logging(config.logging, component="fold", secrets=(), stderr_level=None)
    patient = add_patient(backend.engine, now, required="100000")
    first, first_reference = add_donation(backend.engine, now, patient_id=patient, amount="25000")
    second, second_reference = add_donation(backend.engine, now, patient_id=patient, amount="10000")
    success(backend.engine, first_reference, at(now, 1))
    success(backend.engine, second_reference, at(now, 2), amount="10000")
    run_fold(backend.engine, config, at(now, 3))  # one batch folds both

    log = (Path(config.logging.dir) / "payments.log").read_text(encoding="utf-8")
    lines = [
        line.split(" | ")[-1]
        for line in log.splitlines()
        if "completed successfully" in line or "Updated patient funding" in line
    ]
    assert lines == [
        f"✅ Donation {first} completed successfully",
        "Updated patient funding: 25000.00/100000.00",
        f"✅ Donation {second} completed successfully",
        "Updated patient funding: 35000.00/100000.00",
    ]


def test_log_lines_once_per_change_and_no_secrets(backend, now, logging_reset):
    config = backend.config(**{"webhook.password": SECRET})
    configure_logging(config.logging, component="fold", secrets=secrets_of(config), stderr_level=None)
    patient = add_patient(backend.engine, now, required="100000")
    paid, paid_reference = add_donation(backend.engine, now, patient_id=patient, amount="25000")
    failed, failed_reference = add_donation(backend.engine, now, patient_id=patient, amount="5000")
    success(backend.engine, paid_reference, at(now, 1), auth="verified", password=SECRET)
    failure(backend.engine, failed_reference, at(now, 2), amount="5000", auth="verified", password=SECRET)
    success(backend.engine, paid_reference, at(now, 3), auth="failed", password="wrong-" + SECRET)  # untrusted
    run_fold(backend.engine, config, at(now, 4))
    payments.info(f"a careless line: password={SECRET} and {SECRET}")  # the sinks must scrub it anyway

    directory = Path(config.logging.dir)
    log = (directory / "payments.log").read_text(encoding="utf-8")
    assert f"Processed callback - External ID: {paid_reference}, Status: SUCCESS" in log
    assert f"Processed callback - External ID: {failed_reference}, Status: FAILED" in log
    assert log.count("Processed callback - External ID: RHCI-DN-") == 2
    assert log.count(f"✅ Donation {paid} completed successfully") == 1
    assert log.count("Updated patient funding: 25000.00/100000.00") == 1
    assert log.count(f"❌ Donation {failed} payment failed") == 1
    assert "Rebuild finished" not in log

    rebuild(backend.engine, config, at(now, 5))
    log = (directory / "payments.log").read_text(encoding="utf-8")
    assert log.count("Processed callback - External ID: RHCI-DN-") == 2
    assert log.count(f"✅ Donation {paid} completed successfully") == 1
    assert log.count("Updated patient funding:") == 1
    assert log.count(f"❌ Donation {failed} payment failed") == 1
    assert log.count("Rebuild finished: 3 events folded") == 1

    files = list(directory.glob("*.log"))
    assert {path.name for path in files} >= {"payments.log", "app.log", "errors.log"}
    for path in files:
        assert SECRET not in path.read_text(encoding="utf-8"), path.name

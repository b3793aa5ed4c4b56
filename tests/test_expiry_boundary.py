"""Past poll.max_age_hours is one boundary (pipeline.status_check.past_max_age, created_at <= cutoff) for the
poller, the single-donation check, /metrics' count and `report --check`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jobs.report import check_facts
from pipeline.db import transaction
from pipeline.status_check import (
    COUNT_KEYS,
    SUMMARY_KEYS,
    Candidate,
    PollReport,
    expiry_cutoff,
    load_candidate,
    skip_unaskable,
)
from pipeline.store.metrics import stuck_pending_counts
from tests.builders import add_donation, add_patient

NOW = datetime(2026, 1, 14, 12, 0, 0, tzinfo=UTC)


def test_a_donation_created_at_the_cutoff_is_past_max_age_everywhere(backend):
    config = backend.config()
    cutoff = expiry_cutoff(NOW, config.poll)
    assert cutoff == NOW - timedelta(hours=config.poll.max_age_hours)
    patient = add_patient(backend.engine, cutoff - timedelta(hours=1))
    at_cutoff, _ = add_donation(backend.engine, cutoff, patient)
    just_after, _ = add_donation(backend.engine, cutoff + timedelta(seconds=1), patient)

    assert load_candidate(backend.engine, config, at_cutoff, NOW).expire is True
    assert load_candidate(backend.engine, config, just_after, NOW).expire is False
    with transaction(backend.engine) as session:
        assert stuck_pending_counts(session, NOW, config.poll) == (2, 1)  # both past threshold_minutes
    assert check_facts(backend.engine, config, NOW).stuck_pending == 1


def test_nothing_to_ask_and_nothing_to_expire_is_skipped_and_counted():
    report = PollReport()
    unaskable = Candidate(1, None, "Mpesa", NOW, "PENDING", expire=False)
    assert skip_unaskable(report, unaskable) is True and report.no_transaction_id == 1
    assert skip_unaskable(report, Candidate(2, None, None, NOW, "PENDING", True)) is False
    assert skip_unaskable(report, Candidate(3, "tx-3", "Mpesa", NOW, "PENDING", False)) is False
    assert report.no_transaction_id == 1
    assert tuple(report.counts()) == COUNT_KEYS == ("candidates", *SUMMARY_KEYS, "appended")
    assert report.counts()["no_transaction_id"] == 1 and "no_transaction_id=1" in report.summary()

"""Portal mode's shadow run (portal.write: false), `azamrecon portal diff`, and a rebuild on the portal's
database (docs/portal.md)."""

from __future__ import annotations

import json
from decimal import Decimal

from jobs.portal_diff import portal_diff
from jobs.rebuild import check, rebuild
from tests.portal_fixtures import show_create
from tests.portal_mode_helpers import CALLBACK_PATH, JSON, PortalMode, azampay_callback
from tests.servers import run_cli, write_config


def _paid(mode, patient, amount):
    donation = mode.portal.create_donation(patient, amount=amount)
    external_id = mode.portal.checkout_saved(donation)
    with mode.receiver() as client:
        assert (
            client.post(CALLBACK_PATH, content=azampay_callback(external_id, amount), headers=JSON).status_code == 200
        )
    return donation


def test_shadow_mode_writes_nothing_and_diff_lists_exactly_the_differences(portal_db, tmp_path):
    mode = PortalMode(portal_db, tmp_path, **{"portal.write": False, "portal.scan_interval_seconds": 0.001})
    portal = portal_db
    patient = portal.create_patient("Asha", 3000)
    before = show_create(portal_db)
    agreed = _paid(mode, patient, 1000)
    portal.manual_update(agreed.id, "COMPLETED")  # the portal's own callback view did its job: agreement
    missed = _paid(mode, patient, 1000)  # the portal's view never processed this callback
    forged = portal.create_donation(patient, amount=500)
    portal.checkout_saved(forged)
    portal.manual_update(forged.id, "COMPLETED")  # completed with no AzamPay success at all
    rows_before = {d: portal.read_donation(d).status for d in (agreed.id, missed.id, forged.id)}
    mode.fold()
    assert {d: portal.read_donation(d).status for d in rows_before} == rows_before  # nothing written
    assert portal.read_patient(patient.id).funding_received == Decimal("0.00")
    assert show_create(portal_db) == before
    differences = portal_diff(mode.engine, mode.config, mode.now())
    donations = {(row["id"], row["field"]): row for row in differences if row["kind"] == "donation"}
    assert set(donations) == {(missed.id, "status"), (forged.id, "status")}
    assert donations[(missed.id, "status")]["azamrecon"] == "COMPLETED"
    assert donations[(missed.id, "status")]["portal"] == "PENDING"
    assert "without a trusted AzamPay success" in donations[(forged.id, "status")]["reason"]
    patients = {row["field"]: row for row in differences if row["kind"] == "patient"}
    assert patients["funding"]["azamrecon"] == Decimal("2000.00")  # agreed + missed
    assert patients["funding"]["portal"] == Decimal("1500.00")  # the portal's own Σ: agreed + forged
    assert patients["funding_received"]["portal"] == Decimal("0.00")  # the stale stored column
    config = write_config(tmp_path / "cli.yaml", mode.cli_settings(**{"portal.write": False}))
    done = run_cli("portal", "diff", "--format", "json", config_path=config)
    assert done.returncode == 1, done.stderr
    assert {(row["id"], row["field"]) for row in json.loads(done.stdout) if row["kind"] == "donation"} == set(donations)
    mode.close()


def test_a_rebuild_on_the_portal_database_gives_the_same_portal_values_and_check_is_clean(portal_db, tmp_path):
    mode = PortalMode(portal_db, tmp_path, **{"portal.scan_interval_seconds": 0.001})
    portal = portal_db
    patient = portal.create_patient("Juma", 2500)
    paid = _paid(mode, patient, 1000)
    bill_pay = portal.bill_pay_donation(patient, 1500, patient_amount=1500)
    failed = portal.create_donation(patient, amount=700)
    failed_id = portal.checkout_saved(failed)
    with mode.receiver() as client:
        body = azampay_callback(failed_id, 700, status="failure")
        assert client.post(CALLBACK_PATH, content=body, headers=JSON).status_code == 200
    mode.fold()
    values = _portal_values(portal, [paid.id, failed.id], patient.id)
    assert values[paid.id][0] == "COMPLETED" and values[failed.id][0] == "FAILED"
    assert values["patient"] == (Decimal("2500.00"), "FULLY_FUNDED")
    rebuild(mode.engine, mode.config, mode.now())
    assert _portal_values(portal, [paid.id, failed.id], patient.id) == values
    assert not check(mode.engine, mode.config).differences
    config = write_config(tmp_path / "cli.yaml", mode.cli_settings())
    done = run_cli("rebuild", "--as-of", mode.now().isoformat(), "--format", "json", config_path=config)
    assert done.returncode == 0, done.stderr
    portal_then = json.loads(done.stdout)["portal"]
    assert portal_then["donations"][str(paid.id)]["status"] == "COMPLETED"
    assert portal_then["donations"][str(failed.id)] == {
        "status": "FAILED",
        "completed_at": None,
        "failure_reason": "AzamPay reported the payment failed",
    }
    assert str(bill_pay.id) not in portal_then["donations"]  # the portal's own: never azamrecon's to write
    assert portal_then["patients"][str(patient.id)] == {"funding_received": "2500.00", "status": "FULLY_FUNDED"}
    mode.close()


def _portal_values(portal, donation_ids, patient_id):
    values = {}
    for donation_id in donation_ids:
        row = portal.read_donation(donation_id)
        values[donation_id] = (row.status, row.completed_at, row.failure_reason, row.transaction_id)
    row = portal.read_patient(patient_id)
    values["patient"] = (row.funding_received, row.status)
    return values


def test_a_donation_with_no_azampay_id_is_never_expired_without_a_poll_answer(portal_db, tmp_path):
    from datetime import timedelta

    from jobs.poll import run_poll

    mode = PortalMode(portal_db, tmp_path, **{"poll.max_age_hours": 1})
    donation = portal_db.create_donation(None, amount=1000)
    portal_db.checkout_saved(donation)  # transaction_id holds the external id: no AzamPay id to ask with
    mode.fold()
    mode.clock += timedelta(hours=2)
    report = run_poll(mode.engine, mode.config, None, mode.now())  # no AzamPay call is due
    mode.fold()
    assert report.expired == 0 and report.checked == 0
    assert portal_db.read_donation(donation.id).status == "PENDING"
    mode.close()


def test_rebuild_check_lists_a_portal_row_whose_owned_columns_differ_from_the_fold(portal_db, tmp_path):
    mode = PortalMode(portal_db, tmp_path)
    patient = portal_db.create_patient("Asha", 5000)
    donation = _paid(mode, patient, 1000)
    mode.fold()
    assert not check(mode.engine, mode.config).differences
    # a write that no fold has read yet: the portal row no longer shows what the fold decided
    type(donation).objects.using(portal_db.alias).filter(pk=donation.id).update(status="FAILED")
    lines = check(mode.engine, mode.config).differences
    assert lines == [
        f"portal donation {donation.id} status: azamrecon COMPLETED, portal FAILED "
        f"(AzamPay success (log event 1) not applied by the portal)",
    ]
    mode.close()


def test_a_portal_table_named_like_one_of_azamrecons_is_refused_in_one_line():
    import pytest

    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="portal.patient_table 'patients' is the name of a table of azamrecon's"):
        load_config(None, environ={}, overrides={"portal.enabled": True, "portal.patient_table": "patients"})
    assert load_config(None, environ={}, overrides={"portal.patient_table": "patients"}).portal.enabled is False


def test_donations_and_patients_are_not_created_by_azamrecon_in_portal_mode(portal_db, tmp_path):
    mode = PortalMode(portal_db, tmp_path)
    config = write_config(tmp_path / "cli.yaml", mode.cli_settings())
    for args in (
        ("patients", "add", "--name", "Asha", "--funding-required", "1000"),
        ("donations", "create", "--general", "--amount", "1000", "--msisdn", "255712345678", "--provider", "Airtel"),
    ):
        done = run_cli(*args, config_path=config)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "created in the portal" in done.stderr
    mode.close()

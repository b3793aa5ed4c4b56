"""`azamrecon portal adopt` on a portal whose history is inconsistent, and its refusal of a portal that shows
sandbox auto-complete at work (docs/portal.md, "Adoption")."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from decimal import Decimal

from sqlalchemy import text

from jobs.rebuild import check, rebuild
from tests.portal_mode_helpers import PortalMode
from tests.servers import run_cli, write_config


def _history(portal):
    """A portal with a past: paid AzamPay donations (completed well after creation), a failed and a refunded
    one, Bill Pay, a stale funding_received, and a FULLY_FUNDED patient under its target."""
    asha = portal.create_patient("Asha", 3000)
    juma = portal.create_patient("Juma", 9000, status="FULLY_FUNDED")
    paid = []
    for amount in (1000, 1500):
        donation = portal.create_donation(asha, amount=amount)
        portal.checkout_saved(donation)
        paid.append(donation.id)
    failed = portal.create_donation(juma, amount=700)
    portal.checkout_saved(failed)
    refunded = portal.create_donation(juma, amount=800)
    portal.checkout_saved(refunded)
    pending = portal.create_donation(juma, amount=900)
    portal.checkout_saved(pending)
    type(failed).objects.using(portal.alias).filter(pk=failed.id).update(status="FAILED")
    type(refunded).objects.using(portal.alias).filter(pk=refunded.id).update(status="REFUNDED")
    for donation_id in paid:  # paid an hour after creation: a callback's work, not sandbox auto-complete
        row = portal.read_donation(donation_id)
        type(row).objects.using(portal.alias).filter(pk=donation_id).update(
            status="COMPLETED", completed_at=row.created_at + timedelta(hours=1)
        )
    bill_pay = portal.bill_pay_donation(juma, 500, patient_amount=500)
    staff = portal.create_donation(juma, amount=300, status="COMPLETED")  # a staff edit: no gateway, no id
    return {
        "staff": staff.id,
        "asha": asha.id,
        "juma": juma.id,
        "paid": paid,
        "failed": failed.id,
        "refunded": refunded.id,
        "pending": pending.id,
        "bill_pay": bill_pay.id,
    }


def _log_count(mode) -> int:
    with mode.engine.connect() as connection:
        return connection.execute(text("SELECT COUNT(*) FROM azamrecon_payment_events")).scalar()


def test_adopt_records_the_portals_truth_once_and_lists_where_it_disagrees_with_itself(portal_db, tmp_path):
    mode = PortalMode(portal_db, tmp_path)
    ids = _history(portal_db)
    paid_at = [portal_db.read_donation(d).completed_at for d in ids["paid"]]
    config = write_config(tmp_path / "cli.yaml", mode.cli_settings())
    dry = run_cli("portal", "adopt", "--dry-run", "--format", "json", config_path=config)
    assert dry.returncode == 0, dry.stderr
    listed = {(row["kind"], row["id"], row["field"]) for row in json.loads(dry.stdout)}
    assert ("patient", ids["asha"], "funding_received") in listed  # stored 0, Σ COMPLETED 2500
    assert ("patient", ids["juma"], "status") in listed  # FULLY_FUNDED at 500 of 9000
    assert ("donation", ids["staff"], "transaction_id") in listed  # COMPLETED without a transaction id
    assert _log_count(mode) == 0  # --dry-run changed nothing
    done = run_cli("portal", "adopt", "--format", "csv", config_path=config)
    assert done.returncode == 0, done.stderr
    assert {(row["kind"], row["id"]) for row in csv.DictReader(io.StringIO(done.stdout))} == {
        (kind, str(identifier)) for kind, identifier, _ in listed
    }
    with mode.engine.connect() as connection:
        adopted = dict(
            connection.execute(
                text("SELECT donation_id, status_raw FROM azamrecon_payment_events WHERE source = 'adopt'")
            ).all()
        )
    assert adopted == {
        ids["paid"][0]: "COMPLETED",
        ids["paid"][1]: "COMPLETED",
        ids["failed"]: "FAILED",
        ids["refunded"]: "REFUNDED",
        ids["bill_pay"]: "COMPLETED",
        ids["staff"]: "COMPLETED",
    }
    recorded = _log_count(mode)
    again = run_cli("portal", "adopt", config_path=config)
    assert again.returncode == 0 and _log_count(mode) == recorded  # a second run adds nothing
    mode.fold()
    assert portal_db.read_patient(ids["asha"]).funding_received == Decimal("2500.00")
    assert [portal_db.read_donation(d).status for d in ids["paid"]] == ["COMPLETED", "COMPLETED"]
    assert portal_db.read_donation(ids["refunded"]).status == "REFUNDED"
    assert portal_db.read_donation(ids["pending"]).status == "PENDING"
    before = {d: portal_db.read_donation(d).status for d in (*ids["paid"], ids["failed"], ids["refunded"])}
    rebuild(mode.engine, mode.config, mode.now())  # the log alone reproduces the state at cutover
    assert {d: portal_db.read_donation(d).status for d in before} == before
    assert portal_db.read_patient(ids["asha"]).funding_received == Decimal("2500.00")
    assert not check(mode.engine, mode.config).differences
    assert [portal_db.read_donation(d).completed_at for d in ids["paid"]] == paid_at  # the portal's, kept
    mode.close()


def test_adopt_refuses_a_portal_with_sandbox_auto_complete_at_work_unless_forced(portal_db, tmp_path):
    mode = PortalMode(portal_db, tmp_path)
    donation = portal_db.create_donation(None, amount=1000)
    portal_db.sandbox_autocomplete(donation)
    config = write_config(tmp_path / "cli.yaml", mode.cli_settings())
    refused = run_cli("portal", "adopt", config_path=config)
    assert refused.returncode != 0
    assert len(refused.stderr.strip().splitlines()) == 1 and "sandbox auto-complete" in refused.stderr
    assert _log_count(mode) == 0
    forced = run_cli("portal", "adopt", "--force", config_path=config)
    assert forced.returncode == 0, forced.stderr
    assert "--force" in forced.stderr and _log_count(mode) > 0
    mode.close()


def test_a_sandbox_auto_complete_while_running_is_an_external_write_not_a_credit(portal_db, tmp_path):
    mode = PortalMode(portal_db, tmp_path)
    patient = portal_db.create_patient("Asha", 1000)
    donation = portal_db.create_donation(patient, amount=1000)
    portal_db.sandbox_autocomplete(donation)  # COMPLETED by the checkout itself: no callback, no AzamPay
    mode.fold()
    assert [row[0] for row in mode.anomalies("external_write")] == [donation.id]
    assert portal_db.read_patient(patient.id).funding_received == Decimal("0.00")
    assert portal_db.read_donation(donation.id).status == "COMPLETED"  # not reverted: left for a poll or an operator
    mode.close()

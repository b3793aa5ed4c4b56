"""Portal mode on a database the test Django portal migrated: its donations and patients in, their status and
funding out (docs/portal.md). Driven as the portal drives it: Django's ORM creates and reads the rows."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import text

from jobs.portal_diff import portal_diff
from tests.portal_fixtures import show_create
from tests.portal_mode_helpers import CALLBACK_PATH, JSON, PortalMode, azampay_callback


@pytest.fixture
def mode(portal_db, tmp_path):
    made = PortalMode(portal_db, tmp_path)
    yield made
    made.close()


def test_a_portal_checkout_completes_and_funds_its_patient(mode):
    portal = mode.portal
    patient = portal.create_patient("Asha", 50000)
    donation = portal.create_donation(patient, amount=50000)
    external_id = portal.checkout_saved(donation)
    mode.fold()
    with mode.receiver() as client:
        answer = client.post(CALLBACK_PATH, content=azampay_callback(external_id, 50000), headers=JSON)
    assert answer.status_code == 200, answer.text
    mode.fold()
    row = portal.read_donation(donation.id)
    assert row.status == "COMPLETED" and row.completed_at is not None
    assert row.transaction_id == external_id  # an input, never an output
    assert row.gateway_reference == "4f1c0d9a7be2443c9e51a0d6c2b8e317"  # AzamPay's id, into the empty column
    patient_row = portal.read_patient(patient.id)
    assert patient_row.funding_received == Decimal("50000.00")
    assert patient_row.status == "FULLY_FUNDED"


def test_a_callback_for_a_donation_created_a_moment_ago_is_answered_200(mode):
    portal = mode.portal
    mode.fold()  # the scheduler has run; then the portal creates a donation and its checkout
    donation = portal.create_donation(None, amount=1000)
    external_id = portal.checkout_saved(donation)
    with mode.receiver() as client:
        answer = client.post(CALLBACK_PATH, content=azampay_callback(external_id, 1000), headers=JSON)
    assert answer.status_code == 200, answer.text
    mode.fold()
    assert portal.read_donation(donation.id).status == "COMPLETED"
    assert mode.portal_events(donation.id)[0] == "owned seen"


def test_a_bill_pay_donation_counts_for_its_patient_and_is_never_written(mode):
    portal = mode.portal
    patient = portal.create_patient("Juma", 30000)
    bill_pay = portal.bill_pay_donation(patient, 20000, patient_amount=20000)
    donation = portal.create_donation(patient, amount=10000)
    external_id = portal.checkout_saved(donation)
    mode.fold()
    assert portal.read_patient(patient.id).funding_received == Decimal("20000.00")  # not only the ledger's sum
    with mode.receiver() as client:
        assert client.post(CALLBACK_PATH, content=azampay_callback(external_id, 10000), headers=JSON).status_code == 200
    mode.fold()
    patient_row = portal.read_patient(patient.id)
    assert patient_row.funding_received == Decimal("30000.00") and patient_row.status == "FULLY_FUNDED"
    before = portal.read_donation(bill_pay.id)
    assert before.status == "COMPLETED" and mode.portal_events(bill_pay.id) == ["portal seen"]


def test_a_kes_donation_for_a_tzs_patient_is_listed_not_counted(mode):
    portal = mode.portal
    patient = portal.create_patient("Neema", 5000, funding_currency="TZS")
    kes = portal.create_donation(
        patient, amount=50000, status="COMPLETED", payment_gateway="YELLOWCARD", currency="KES"
    )
    mode.fold()
    patient_row = portal.read_patient(patient.id)
    assert patient_row.funding_received == Decimal("0.00") and patient_row.status == "PUBLISHED"
    assert [row[0] for row in mode.anomalies("currency_mismatch")] == [kes.id]
    listed = [row for row in portal_diff(mode.engine, mode.config, mode.now()) if row["field"].startswith("other")]
    assert [(row["id"], row["field"], row["portal"]) for row in listed] == [
        (patient.id, "other currency KES", Decimal("50000.00"))
    ]


def test_a_50000_tzs_donation_never_fully_funds_a_5000_usd_patient(mode):
    portal = mode.portal
    patient = portal.create_patient("Juma", 5000, funding_currency="USD")
    donation = portal.create_donation(patient, amount=50000)  # TZS, through the portal's AzamPay checkout
    external_id = portal.checkout_saved(donation)
    with mode.receiver() as client:
        assert client.post(CALLBACK_PATH, content=azampay_callback(external_id, 50000), headers=JSON).status_code == 200
    mode.fold()
    assert portal.read_donation(donation.id).status == "COMPLETED"  # the payment is real
    row = portal.read_patient(patient.id)
    assert (row.funding_received, row.status) == (Decimal("0.00"), "PUBLISHED")  # still on the donate list


def test_a_fractional_mobile_money_amount_is_credited_at_the_truncated_charge(mode):
    portal = mode.portal
    donation = portal.create_donation(None, amount="10000.75")
    external_id = portal.checkout_saved(donation)
    with mode.receiver() as client:
        assert client.post(CALLBACK_PATH, content=azampay_callback(external_id, 10000), headers=JSON).status_code == 200
    mode.fold()
    assert portal.read_donation(donation.id).status == "COMPLETED"


def test_a_bank_checkout_is_charged_the_exact_amount(mode):
    portal = mode.portal
    donation = portal.create_donation(None, amount="10000.75")
    external_id = portal.checkout_saved(donation, provider="CRDB", bank=True)
    with mode.receiver() as client:
        body = azampay_callback(external_id, "10000.75", operator="CRDB")
        assert client.post(CALLBACK_PATH, content=body, headers=JSON).status_code == 200
    mode.fold()
    assert portal.read_donation(donation.id).status == "COMPLETED"


def test_a_forged_callback_with_the_exact_reference_and_amount_credits_nothing(portal_db, tmp_path):
    mode = PortalMode(portal_db, tmp_path, **{"webhook.password": "hook-secret"})
    portal = portal_db
    patient = portal.create_patient("Asha", 1000)
    donation = portal.create_donation(patient, amount=1000)
    external_id = portal.checkout_saved(donation)
    with mode.receiver() as client:  # what the portal's status view hands anyone, and no credential
        client.post(CALLBACK_PATH, content=azampay_callback(external_id, 1000), headers=JSON)
    mode.fold()
    assert portal.read_donation(donation.id).status == "PENDING"
    assert portal.read_patient(patient.id).funding_received == Decimal("0.00")
    assert mode.anomalies("unauthenticated")
    mode.close()


@pytest.mark.parametrize("writer", ["manual_update", "status_view_complete", "stablecoin_complete", "admin_bulk"])
def test_another_writer_completing_an_owned_donation_is_an_external_write_not_a_credit(mode, writer):
    portal = mode.portal
    patient = portal.create_patient("Asha", 1000)
    donation = portal.create_donation(patient, amount=1000)
    portal.checkout_saved(donation)
    mode.fold()
    if writer == "admin_bulk":
        portal.admin_bulk([donation.id], "COMPLETED")
    elif writer == "manual_update":
        portal.manual_update(donation.id, "COMPLETED")
    else:
        getattr(portal, writer)(donation.id)
    mode.config.portal.scan_interval_seconds = 0.001  # the full comparison that sees queryset.update()
    mode.fold()
    assert [row[0] for row in mode.anomalies("external_write")] == [donation.id]
    assert portal.read_patient(patient.id).funding_received == Decimal("0.00")  # not credited
    assert portal.read_donation(donation.id).status == "COMPLETED"  # not reverted either
    mode.fold()
    assert len(mode.anomalies("external_write")) == 1  # noticed once, never fought over


def test_the_checkout_views_late_save_is_reasserted_once(mode):
    portal = mode.portal
    mode.config.portal.scan_interval_seconds = 0.001  # every fold compares every row
    donation = portal.create_donation(None, amount=1000)
    external_id = portal.checkout_saved(donation)
    stale = portal.read_donation(donation.id)  # a view's in-memory row, read before azamrecon's write
    with mode.receiver() as client:
        assert client.post(CALLBACK_PATH, content=azampay_callback(external_id, 1000), headers=JSON).status_code == 200
    mode.fold()
    assert portal.read_donation(donation.id).status == "COMPLETED"
    stale.save(using=portal.alias)  # its late save() puts PENDING back, and every other column it read
    assert portal.read_donation(donation.id).status == "PENDING"
    mode.fold()
    assert portal.read_donation(donation.id).status == "COMPLETED"  # re-asserted
    assert ["late save" in detail for _, detail in mode.anomalies("external_write")] == [True]
    stale.save(using=portal.alias)  # a second time: recorded, and left for an operator
    mode.fold()
    mode.fold()
    assert portal.read_donation(donation.id).status == "PENDING"
    assert len(mode.anomalies("external_write")) == 2


def test_an_admin_refund_takes_the_donation_out_of_the_patients_funding(mode):
    portal = mode.portal
    mode.config.portal.scan_interval_seconds = 0.001
    patient = portal.create_patient("Asha", 2000)
    donation = portal.create_donation(patient, amount=1000)
    external_id = portal.checkout_saved(donation)
    with mode.receiver() as client:
        client.post(CALLBACK_PATH, content=azampay_callback(external_id, 1000), headers=JSON)
    mode.fold()
    assert portal.read_patient(patient.id).funding_received == Decimal("1000.00")
    portal.refund(donation.id)
    mode.fold()
    assert portal.read_donation(donation.id).status == "REFUNDED"  # not fought over
    assert portal.read_patient(patient.id).funding_received == Decimal("0.00")
    mode.fold()
    assert portal.read_donation(donation.id).status == "REFUNDED"


def test_init_beside_the_portal_tables_alters_none_of_them(portal_db, tmp_path):
    before = show_create(portal_db)
    mode = PortalMode(portal_db, tmp_path)
    portal_db.create_patient("Asha", 1000)
    mode.fold()
    assert show_create(portal_db) == before
    mode.close()


def test_a_callback_before_the_checkout_view_saved_is_known_and_credited_once_the_portal_stores_it(mode):
    portal = mode.portal
    mode.config.portal.scan_interval_seconds = 0.001
    donation = portal.create_donation(None, amount=1000)
    stale = portal.read_donation(donation.id)  # the checkout view's row, still waiting for AzamPay's answer
    external_id = portal.external_id(stale)
    with mode.receiver() as client:  # the donor approved on the phone before the view saved anything
        answer = client.post(CALLBACK_PATH, content=azampay_callback(external_id, 1000), headers=JSON)
    assert answer.status_code == 200, answer.text
    mode.fold()
    assert portal.read_donation(donation.id).status == "PENDING"  # nothing stored to check it against yet
    stale.payment_gateway, stale.payment_method, stale.transaction_id = "Azam Pay", "Mobile Money - Airtel", external_id
    stale.save(using=portal.alias)  # the view's save lands
    mode.fold()
    assert portal.read_donation(donation.id).status == "COMPLETED"


def test_a_donation_deleted_in_the_portal_counts_no_more(mode):
    portal = mode.portal
    mode.config.portal.scan_interval_seconds = 0.001
    patient = portal.create_patient("Asha", 5000)
    bill_pay = portal.bill_pay_donation(patient, 2000, patient_amount=2000)
    mode.fold()
    assert portal.read_patient(patient.id).funding_received == Decimal("2000.00")
    type(bill_pay).objects.using(portal.alias).filter(pk=bill_pay.id).delete()
    mode.fold()
    assert portal.read_patient(patient.id).funding_received == Decimal("0.00")
    assert mode.portal_events(bill_pay.id) == ["portal seen", "portal deleted"]
    mode.fold()
    assert mode.portal_events(bill_pay.id) == ["portal seen", "portal deleted"]  # recorded once


def test_an_admin_lowering_funding_required_is_a_fact_and_the_target_is_met(mode):
    portal = mode.portal
    mode.config.portal.scan_interval_seconds = 0.001
    patient = portal.create_patient("Asha", 5000)
    portal.bill_pay_donation(patient, 1000, patient_amount=1000)
    mode.fold()
    assert portal.read_patient(patient.id).status == "PUBLISHED"
    type(patient).objects.using(portal.alias).filter(pk=patient.id).update(funding_required=Decimal("1000"))
    mode.fold()
    row = portal.read_patient(patient.id)
    assert (row.funding_received, row.status) == (Decimal("1000.00"), "FULLY_FUNDED")
    with mode.engine.connect() as connection:
        kinds = connection.execute(
            text("SELECT operator FROM payment_events WHERE patient_id = :id ORDER BY id"), {"id": patient.id}
        ).scalars()
        assert list(kinds) == ["patient seen", "patient changed"]


def test_a_checkout_in_flight_is_recorded_when_its_gateway_is_set_not_before(mode):
    portal = mode.portal
    donation = portal.create_donation(None, amount=1000)  # the checkout view has not heard from AzamPay yet
    mode.fold()
    assert mode.portal_events(donation.id) == []  # whose it is cannot be told yet
    later = portal.create_donation(None, amount=500, payment_gateway="YELLOWCARD", status="COMPLETED")
    mode.fold()  # an incremental read past the high mark: the undecided row is read again
    portal.checkout_saved(donation)
    mode.fold()
    assert mode.portal_events(donation.id) == ["owned seen"]
    assert mode.portal_events(later.id) == ["portal seen"]


def test_the_portal_moving_a_credited_donation_to_another_patient_moves_its_credit(mode):
    portal = mode.portal
    mode.config.portal.scan_interval_seconds = 0.001
    asha, juma = portal.create_patient("Asha", 5000), portal.create_patient("Juma", 5000)
    donation = portal.create_donation(asha, amount=1000)
    external_id = portal.checkout_saved(donation)
    with mode.receiver() as client:
        client.post(CALLBACK_PATH, content=azampay_callback(external_id, 1000), headers=JSON)
    mode.fold()
    assert portal.read_patient(asha.id).funding_received == Decimal("1000.00")
    type(donation).objects.using(portal.alias).filter(pk=donation.id).update(
        patient=juma, patient_amount=Decimal("800")
    )
    mode.fold()  # a changed fact: the donation is replayed, its stored credit moved, and the fold goes on
    mode.fold()
    assert portal.read_patient(asha.id).funding_received == Decimal("0.00")
    assert portal.read_patient(juma.id).funding_received == Decimal("800.00")


def test_an_untrusted_callback_does_not_make_a_donation_azamrecons(portal_db, tmp_path):
    mode = PortalMode(portal_db, tmp_path, **{"webhook.password": "hook-secret"})
    patient = portal_db.create_patient("Asha", 1000)
    donation = portal_db.create_donation(patient, amount=1000)  # a stablecoin payment in flight
    with mode.receiver() as client:  # a forged callback naming it, with no credential
        client.post(
            CALLBACK_PATH, content=azampay_callback(f"RHCI-DN-{donation.id}-29991231000000", 1000), headers=JSON
        )
    mode.fold()
    assert mode.portal_events(donation.id) == []  # still undecided: a forged callback decides nothing
    portal_db.stablecoin_complete(donation.id)
    mode.fold()
    assert mode.portal_events(donation.id) == ["portal seen"]  # the portal's: its COMPLETED counts
    assert portal_db.read_patient(patient.id).funding_received == Decimal("1000.00")
    mode.close()

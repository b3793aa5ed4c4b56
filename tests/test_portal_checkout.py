"""The two ways azamrecon learns AzamPay's transaction id in portal mode, so the poller can vouch for a
donation (docs/portal.md, "Polling"): the portal's one-line fix (it stores the top-level transactionId), and
its checkout through azamrecon's endpoint, server to server. And the case neither holds: never polled."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from jobs.poll import run_poll
from jobs.report import build_report
from pipeline.azampay import AzamPayClient
from receiver.portal import CHECKOUT_PATH
from sandbox.testing import running_sandbox
from tests.portal_mode_helpers import CALLBACK_PATH, JSON, PortalMode, azampay_callback
from tests.test_checkout import azampay_overrides

PHONE = "255712345678"
KEY = "portal-checkout-key"


def _poll(mode):
    with AzamPayClient(mode.config.azampay) as client:
        return run_poll(mode.engine, mode.config, client, mode.now())


def test_the_portal_storing_azampays_transaction_id_makes_its_donation_pollable(portal_db, tmp_path):
    with running_sandbox(outcomes={PHONE: "no_callback"}) as sandbox:
        mode = PortalMode(portal_db, tmp_path, **azampay_overrides(sandbox, **{"poll.threshold_minutes": 0}))
        patient = portal_db.create_patient("Asha", 2000)
        donation = portal_db.create_donation(patient, amount=2000)
        external_id = portal_db.external_id(donation)
        with AzamPayClient(mode.config.azampay) as client:  # the portal's own checkout call
            answer = client.mno_checkout(PHONE, Decimal("2000"), external_id, "Airtel", currency="TZS")
        # the one-line fix: response_data.get("transactionId") instead of response_data["data"]["transactionId"]
        portal_db.checkout_saved(donation, azampay_transaction_id=answer.transaction_id)
        mode.fold()
        report = _poll(mode)
        mode.fold()
    assert report.checked == 1 and report.success == 1
    row = portal_db.read_donation(donation.id)
    assert row.status == "COMPLETED" and row.transaction_id == answer.transaction_id
    assert portal_db.read_patient(patient.id).status == "FULLY_FUNDED"
    mode.close()


def test_a_checkout_through_azamrecon_learns_the_id_itself(portal_db, tmp_path):
    with running_sandbox(outcomes={PHONE: "no_callback"}) as sandbox:
        overrides = azampay_overrides(sandbox, **{"poll.threshold_minutes": 0, "receiver.checkout_api_key": KEY})
        mode = PortalMode(portal_db, tmp_path, **overrides)
        donation = portal_db.create_donation(None, amount="1500.60")
        with mode.receiver() as client:
            answer = client.post(
                CHECKOUT_PATH,
                json={"donation_id": donation.id, "msisdn": PHONE, "provider": "Airtel"},
                headers={"X-API-Key": KEY},
            )
            missing = client.post(
                CHECKOUT_PATH,
                json={"donation_id": 10**6, "msisdn": PHONE, "provider": "Airtel"},
                headers={"X-API-Key": KEY},
            )
        assert answer.status_code == 201, answer.text
        assert missing.status_code == 404
        body = answer.json()
        assert body["charge_amount"] == "1500.00"  # mobile money: the amount truncated to whole units
        assert body["reference"].startswith(f"RHCI-DN-{donation.id}-")
        mode.fold()
        report = _poll(mode)
        mode.fold()
    assert report.checked == 1
    row = portal_db.read_donation(donation.id)
    assert row.status == "COMPLETED" and row.transaction_id is None  # never written by azamrecon
    assert mode.portal_events(donation.id)[0] == "owned seen"
    mode.close()


def test_an_id_taken_from_a_callback_is_never_polled(portal_db, tmp_path):
    with running_sandbox() as sandbox:
        overrides = azampay_overrides(sandbox, **{"poll.threshold_minutes": 0, "webhook.password": "hook-secret"})
        mode = PortalMode(portal_db, tmp_path, **overrides)
        donation = portal_db.create_donation(None, amount=1000)
        external_id = portal_db.checkout_saved(donation)  # the portal's fallback: no AzamPay id stored
        with mode.receiver() as client:  # untrusted (no credential): it asks for a poll, and names an id
            client.post(CALLBACK_PATH, content=azampay_callback(external_id, 1000), headers=JSON)
        mode.fold()
        report = _poll(mode)
        status_calls = sandbox.stats().get("status_calls", 0)
    assert report.checked == 0 and report.expired == 0 and status_calls == 0
    assert portal_db.read_donation(donation.id).status == "PENDING"
    now = mode.now()
    stuck = build_report(mode.engine, mode.config, day=now.date(), now=now)["stuck_pending"]
    assert stuck["unpollable"] == 1 and stuck["donations"][0]["pollable"] is False
    mode.close()


def test_a_checkout_through_azamrecon_is_refused_for_a_donation_it_cannot_complete(portal_db, tmp_path):
    with running_sandbox(outcomes={PHONE: "no_callback"}) as sandbox:
        overrides = {"receiver.checkout_api_key": KEY, "receiver.checkout_rate_limit_per_minute": 100}
        mode = PortalMode(portal_db, tmp_path, **azampay_overrides(sandbox, **overrides))
        theirs = portal_db.create_donation(None, amount=1000)  # left undecided past poll.max_age_hours: the portal's
        type(theirs).objects.using(portal_db.alias).filter(pk=theirs.id).update(
            created_at=theirs.created_at - timedelta(days=2)
        )
        mode.fold()
        yellow = portal_db.create_donation(None, amount=1000, payment_gateway="YELLOWCARD")
        checked_out = portal_db.create_donation(None, amount=1000)
        portal_db.checkout_saved(checked_out)  # the portal's own checkout ran
        ours = portal_db.create_donation(None, amount=1000)
        body = {"msisdn": PHONE, "provider": "Airtel"}
        with mode.receiver() as client:
            answers = [
                client.post(CHECKOUT_PATH, json={**body, "donation_id": d.id}, headers={"X-API-Key": KEY})
                for d in (theirs, yellow, checked_out, ours, ours)
            ]
        checkouts = sandbox.stats().get("checkouts", 0)
    assert [answer.status_code for answer in answers] == [400, 400, 400, 201, 400]
    assert "the portal's" in answers[0].json()["detail"]
    assert all("already" in answers[i].json()["detail"] for i in (1, 2, 4))
    assert checkouts == 1  # only one prompt ever reached a donor's phone
    mode.close()

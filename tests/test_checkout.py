"""Checkout initiation against the real sandbox over loopback, on SQLite and MariaDB.

Accepted -> PENDING donation with AzamPay's transactionId and a `checkout` event; refused -> FAILED after
the fold with the reason in the error; timeout -> UNKNOWN (needs_check), never FAILED. The CLI's
`donations create` is in tests/test_checkout_cli.py.
"""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal

import pytest

from jobs.fold import run_fold
from pipeline.azampay import AzamPayClient
from pipeline.checkout import charge_amount_of, initiate_checkout
from pipeline.errors import AzamPayAuthError, AzamPayUnavailable, AzamPayValidationError, InputError, NotFound
from sandbox.testing import running_sandbox
from tests.builders import add_patient

MSISDN = "0758285812"


def azampay_overrides(sandbox, **extra) -> dict:
    """Dotted config keys pointing azampay.* at this sandbox (fast failures: no GET retries, short timeouts)."""
    s = sandbox.settings
    values = {
        "azampay.auth_url": sandbox.url,
        "azampay.checkout_url": sandbox.url,
        "azampay.client_id": s.client_id,
        "azampay.client_secret": s.client_secret,
        "azampay.api_key": s.api_key,
        "azampay.get_retries": 0,
        "azampay.timeout_connect": 2.0,
        "azampay.timeout_read": 5.0,
    }
    values.update(extra)
    return values


def events(backend, donation_id=None):
    sql = "SELECT id, source, status, status_raw, transaction_ref, donation_id, auth, body FROM payment_events"
    if donation_id is not None:
        return backend.rows(sql + " WHERE donation_id = :d ORDER BY id", d=donation_id)
    return backend.rows(sql + " ORDER BY id")


def donation(backend, donation_id):
    from pipeline.db import transaction
    from pipeline.models import Donation

    with transaction(backend.engine) as session:
        return session.get(Donation, donation_id)


def anomaly_kinds(backend, donation_id) -> list[str]:
    return [
        row[0]
        for row in backend.rows("SELECT kind FROM anomalies WHERE donation_id = :d ORDER BY event_id", d=donation_id)
    ]


def checkout(backend, config, client, now, *, amount: str, provider: str, patient_id=None, **extra):
    """initiate_checkout from this file's donor number, the amount as text."""
    return initiate_checkout(
        backend.engine,
        config,
        client,
        patient_id=patient_id,
        amount=Decimal(amount),
        msisdn=MSISDN,
        provider=provider,
        now=now,
        **extra,
    )


@pytest.fixture
def sandbox():
    with running_sandbox() as handle:
        yield handle


@pytest.fixture
def setup(backend, sandbox):
    config = backend.config(**azampay_overrides(sandbox))
    with AzamPayClient(config.azampay, backoff_factor=0) as client:
        yield config, client


def test_accepted_checkout_is_pending_with_transaction_id_and_event(backend, sandbox, setup, now):
    config, client = setup
    patient = add_patient(backend.engine, now)
    result = checkout(backend, config, client, now, patient_id=patient, amount="25000", provider="mpesa")
    assert result.accepted and result.error is None and result.event_status == "PENDING"
    assert re.fullmatch(rf"RHCI-DN-{result.donation_id}-20260114093000", result.reference)
    assert result.charge_amount == Decimal("25000") and result.charge_currency == "TZS"

    txn = sandbox.transaction(result.transaction_id)
    assert txn["external_id"] == result.reference
    assert txn["amount"] == "25000" and txn["provider"] == "Mpesa" and txn["msisdn"] == "255758285812"
    assert txn["additional_properties"] == {"donation_id": result.donation_id}

    row = donation(backend, result.donation_id)
    assert row.transaction_id == result.transaction_id and row.status == "PENDING"
    assert row.patient_amount == Decimal("25000") and row.support_amount == Decimal("0")
    [event] = events(backend)
    assert (event.source, event.status, event.transaction_ref, event.donation_id, event.auth) == (
        "checkout",
        "PENDING",
        result.transaction_id,
        result.donation_id,
        "n/a",
    )
    assert json.loads(bytes(event.body))["transactionId"] == result.transaction_id  # the raw answer, byte for byte
    assert event.id == result.event_id

    run_fold(backend.engine, config, now)
    row = donation(backend, result.donation_id)
    assert row.status == "PENDING" and not row.needs_check
    assert anomaly_kinds(backend, result.donation_id) == []


def test_charge_amount_is_converted_to_whole_shillings(backend, sandbox, now):
    config = backend.config(
        **azampay_overrides(sandbox),
        **{"donations.currency": "USD", "donations.exchange_rates": {"TZS": "1", "USD": "2650.50"}},
    )
    patient = add_patient(backend.engine, now, required="1000")
    with AzamPayClient(config.azampay) as client:
        result = checkout(
            backend,
            config,
            client,
            now,
            patient_id=patient,
            amount="10.25",
            provider="Airtel",
            patient_amount=Decimal("10.00"),
            currency="usd",
        )
    assert result.charge_amount == Decimal("27168")  # 27167.625 rounded half up
    assert sandbox.transaction(result.transaction_id)["amount"] == "27168"
    row = donation(backend, result.donation_id)
    assert (row.amount, row.currency, row.charge_amount, row.charge_currency) == (
        Decimal("10.25"),
        "USD",
        Decimal("27168"),
        "TZS",
    )
    assert (row.patient_amount, row.support_amount) == (Decimal("10.00"), Decimal("0.25"))
    with pytest.raises(InputError, match="less than one"):
        charge_amount_of(Decimal("0.40"), "TZS", config)
    with pytest.raises(InputError, match="no exchange rate for currency 'EUR'"):
        charge_amount_of(Decimal("1"), "EUR", config)


def test_a_patient_donation_must_be_in_the_funding_currency(backend, sandbox, now):
    """A USD patient_amount credited to a patient whose funding is counted in TZS would add dollars to shillings."""
    config = backend.config(
        **azampay_overrides(sandbox), **{"donations.exchange_rates": {"TZS": "1", "USD": "2650.50"}}
    )
    patient = add_patient(backend.engine, now, required="1000000")
    with AzamPayClient(config.azampay) as client:
        with pytest.raises(InputError, match="a patient's funding is counted in TZS"):
            checkout(backend, config, client, now, patient_id=patient, amount="10", provider="Airtel", currency="USD")
        assert backend.scalar("SELECT COUNT(*) FROM donations") == 0 and sandbox.transactions() == []
        general = checkout(
            backend, config, client, now, patient_id=None, amount="10", provider="Airtel", currency="USD"
        )
    assert general.charge_amount == Decimal("26505")  # a general donation funds no patient: any configured currency


def test_bad_local_input_writes_and_sends_nothing(backend, sandbox, setup, now):
    config, client = setup
    patient = add_patient(backend.engine, now)
    cases = [
        (dict(patient_id=patient, amount=Decimal("1000"), msisdn="0123", provider="Mpesa"), InputError, "msisdn"),
        (dict(patient_id=patient, amount=Decimal("1000"), msisdn=MSISDN, provider="Paypal"), InputError, "provider"),
        (dict(patient_id=patient, amount=Decimal("-5"), msisdn=MSISDN, provider="Mpesa"), InputError, "amount"),
        (
            dict(patient_id=patient, amount=Decimal("1000"), msisdn=MSISDN, provider="Mpesa", currency="EUR"),
            InputError,
            "exchange rate",
        ),
        (
            dict(
                patient_id=patient,
                amount=Decimal("1000"),
                msisdn=MSISDN,
                provider="Mpesa",
                patient_amount=Decimal("2000"),
            ),
            InputError,
            "must not be negative",
        ),
        (dict(patient_id=999, amount=Decimal("1000"), msisdn=MSISDN, provider="Mpesa"), NotFound, "patient 999"),
        (
            dict(patient_id=patient, amount=Decimal("1000"), msisdn=MSISDN, provider=""),
            InputError,
            "provider is required",
        ),
        (
            dict(patient_id=patient, amount=Decimal("1000"), msisdn="", provider="Mpesa"),
            InputError,
            "msisdn is required",
        ),
    ]
    for kwargs, error, text in cases:
        with pytest.raises(error, match=text):
            initiate_checkout(backend.engine, config, client, now=now, **kwargs)
    assert backend.scalar("SELECT COUNT(*) FROM donations") == 0
    assert backend.scalar("SELECT COUNT(*) FROM payment_events") == 0
    assert sandbox.stats().get("checkouts", 0) == 0


def _assert_failed_checkout(backend, config, sandbox, result, now, field_name, message_part):
    assert result.event_status == "FAILED" and result.transaction_id is None
    assert isinstance(result.error, AzamPayValidationError)
    assert field_name in result.error.fields
    assert message_part in str(result.error) and "\n" not in str(result.error)
    with pytest.raises(AzamPayValidationError):
        result.raise_for_error()
    [event] = events(backend)
    assert (event.source, event.status, event.donation_id, event.transaction_ref) == (
        "checkout",
        "FAILED",
        result.donation_id,
        None,
    )
    body = json.loads(bytes(event.body))
    assert (
        body["error"] == "AzamPayValidationError"
        and field_name in body["fields"]
        and body["externalId"] == result.reference
    )
    text = bytes(event.body).decode()
    for secret in (sandbox.settings.client_secret, sandbox.settings.api_key):
        assert secret not in text
    assert event.status_raw.startswith("checkout rejected: ")
    run_fold(backend.engine, config, now)
    row = donation(backend, result.donation_id)
    assert row.status == "FAILED" and row.transaction_id is None
    assert backend.scalar("SELECT COUNT(*) FROM funding_credits") == 0


def test_problem_details_rejection_fails_the_donation_with_the_reason(backend, sandbox, setup, now):
    config, client = setup
    patient = add_patient(backend.engine, now)
    result = checkout(
        backend,
        config,
        client,
        now,
        patient_id=patient,
        amount="5000",
        provider="Tigo",
        extra_properties={"sandbox_outcome": "no-such-outcome"},
    )
    _assert_failed_checkout(
        backend, config, sandbox, result, now, "additionalProperties.sandbox_outcome", "no-such-outcome"
    )
    assert sandbox.stats()["checkout_rejections"] == 1


def test_rejected_currency_fails_the_donation(backend, sandbox, now):
    # local validation cannot catch this one: the configured charge currency is not one AzamPay accepts
    config = backend.config(**azampay_overrides(sandbox), **{"donations.charge_currency": "USD"})
    patient = add_patient(backend.engine, now)
    with AzamPayClient(config.azampay) as client:
        result = checkout(backend, config, client, now, patient_id=patient, amount="5000", provider="Mpesa")
    _assert_failed_checkout(backend, config, sandbox, result, now, "currency", "The currency must be TZS.")


def test_refused_credentials_fail_the_donation(backend, sandbox, now):
    config = backend.config(**azampay_overrides(sandbox, **{"azampay.client_secret": "wrong-secret"}))
    with AzamPayClient(config.azampay) as client:
        result = checkout(backend, config, client, now, patient_id=None, amount="1000", provider="Mpesa")
    assert isinstance(result.error, AzamPayAuthError) and result.event_status == "FAILED"
    [event] = events(backend)
    assert "wrong-secret" not in bytes(event.body).decode()
    run_fold(backend.engine, config, now)
    assert donation(backend, result.donation_id).status == "FAILED"


def test_timeout_is_recorded_unknown_not_failed(backend, sandbox, now):
    config = backend.config(**azampay_overrides(sandbox, **{"azampay.timeout_read": 0.3}))
    with AzamPayClient(config.azampay) as client:
        client.payment_partners()  # the token is cached; only the checkout itself will be slow
        sandbox.set_latency(1.0)
        try:
            result = checkout(backend, config, client, now, patient_id=None, amount="1000", provider="Mpesa")
        finally:
            sandbox.set_latency(0.0)
    assert isinstance(result.error, AzamPayUnavailable) and "read timeout" in str(result.error)
    assert result.event_status == "UNKNOWN" and result.transaction_id is None
    # AzamPay did accept it (after our timeout): exactly why the outcome is UNKNOWN rather than FAILED
    deadline = time.monotonic() + 5
    while not sandbox.transactions() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(sandbox.transactions()) == 1
    [event] = events(backend)
    assert (event.source, event.status, event.donation_id) == ("checkout", "UNKNOWN", result.donation_id)
    assert event.status_raw.startswith("checkout no answer: ")
    run_fold(backend.engine, config, now)
    row = donation(backend, result.donation_id)
    assert row.status == "PENDING" and row.needs_check
    assert anomaly_kinds(backend, result.donation_id) == ["unknown_status"]

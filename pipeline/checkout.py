"""Checkout initiation: create the PENDING donation, ask AzamPay to collect, record the answer in the log.

Order matters. The donation (and its external reference) is committed *before* AzamPay is called, so a
callback that races the checkout answer already finds its donation through utilityref. The answer is then
recorded in one transaction: AzamPay's transactionId on the donation plus a `checkout` event. Nothing here
writes a derived column (status, ...): the fold reads the `checkout` event.

What each outcome appends (source="checkout", auth="n/a", donation_id set):

| AzamPay answered                                  | event status | the fold makes the donation          |
|---------------------------------------------------|--------------|--------------------------------------|
| success + transactionId                           | PENDING      | PENDING (waits for callback / poll)  |
| 400 ProblemDetails / success:false (rejected)     | FAILED       | FAILED                               |
| token refused / 401 after refresh (auth)          | FAILED       | FAILED                               |
| an answer we cannot interpret                     | FAILED       | FAILED                               |
| timeout, connection error, 5xx (unavailable)      | UNKNOWN      | PENDING + needs_check, unknown_status|

Why a timeout is not FAILED: a read timeout or a 5xx may come after AzamPay accepted the request and
pushed the USSD prompt to the donor's phone, so the donor may still pay. Recording FAILED would be a
guess presented as a fact. UNKNOWN keeps the donation PENDING, raises an `unknown_status` anomaly and sets
needs_check, so it is visible; a callback (found by utilityref) still completes it, and if nothing arrives
the poller expires it after poll.max_age_hours (it cannot ask the status call without a transactionId).
A trusted success after FAILED still wins (late_success), so even a wrong FAILED never loses money.

The checkout POST is never retried (a resend could charge the donor twice).

Write transactions here begin IMMEDIATE on SQLite: create_donation reads the patient before it inserts,
and a deferred WAL read transaction that later upgrades to a write fails at once ("database is locked",
no busy wait) when the receiver committed in between.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import Engine

from pipeline.azampay import AzamPayClient
from pipeline.config import Config
from pipeline.db import transaction
from pipeline.errors import (
    AzamPayError,
    AzamPayUnavailable,
    AzamPayValidationError,
    CheckoutNotRecorded,
    InputError,
    NotFound,
    StoreError,
)
from pipeline.events import EventFields, normalise_msisdn
from pipeline.fold import NOT_APPLICABLE, Source, Status
from pipeline.logs import payments
from pipeline.models import Donation
from pipeline.portal_facts import OWNED
from pipeline.portal_record import record_rows
from pipeline.resolution import ReferenceFormat
from pipeline.store.checkpoint import CHECKPOINT
from pipeline.store.donations import PROVIDERS, create_donation, normalise_provider
from pipeline.store.events import append_event, event_row
from pipeline.store.portal import PortalRows, SeenRows
from pipeline.store.state import SqlFoldStore

ACCEPTED, REJECTED, UNKNOWN = Status.PENDING, Status.FAILED, Status.UNKNOWN


@dataclass
class CheckoutResult:
    """What happened. `event_status` is the status of the appended checkout event (PENDING | FAILED | UNKNOWN);
    `error` is set when AzamPay refused or could not be reached (the event is appended all the same)."""

    donation_id: int
    reference: str
    charge_amount: Decimal
    charge_currency: str
    transaction_id: str | None
    event_status: str
    event_id: int | None
    message: str = ""
    error: AzamPayError | None = None

    @property
    def accepted(self) -> bool:
        return self.error is None

    def raise_for_error(self) -> None:
        if self.error is not None:
            raise self.error


def charge_amount_of(amount: Decimal, currency: str, config: Config) -> Decimal:
    """`amount` in `currency` converted to the charge currency (TZS) with donations.exchange_rates, whole shillings."""
    if not isinstance(amount, Decimal):
        raise TypeError("amount must be a Decimal")
    rates = config.donations.exchange_rates
    rate = rates.get(currency)
    if rate is None:
        known = ", ".join(sorted(rates))
        raise InputError(f"no exchange rate for currency {currency!r} (donations.exchange_rates has {known})")
    charge = (amount * Decimal(rate)).quantize(Decimal("1"), rounding=ROUND_HALF_UP)
    if charge <= 0:
        raise InputError(
            f"amount {amount} {currency} is less than one {config.donations.charge_currency} after conversion"
        )
    return charge


def _clip(text: str | None, length: int) -> str | None:
    return None if text is None else text[:length]


def error_body(error: AzamPayError, donation_id: int, reference: str) -> bytes:
    """The event body for a refused/failed checkout: the error's class, message and ProblemDetails field
    messages. AzamPayError messages never carry a token, secret or API key (pipeline.azampay)."""
    data: dict[str, Any] = {
        "donation_id": donation_id,
        "externalId": reference,
        "error": type(error).__name__,
        "message": str(error),
    }
    if isinstance(error, AzamPayValidationError) and error.fields:
        data["fields"] = error.fields
    return json.dumps(data, ensure_ascii=False, sort_keys=True).encode()


def initiate_checkout(
    engine: Engine,
    config: Config,
    client: AzamPayClient,
    *,
    patient_id: int | None,
    amount: Decimal,
    msisdn: str,
    provider: str,
    now: datetime,
    patient_amount: Decimal | None = None,
    support_amount: Decimal | None = None,
    currency: str | None = None,
    extra_properties: dict[str, Any] | None = None,
) -> CheckoutResult:
    """Create a PENDING donation, ask AzamPay for an MNO checkout, append the `checkout` event.

    Bad local input (amounts, msisdn, provider, unknown patient or currency) raises InputError/NotFound
    before anything is written or sent. An AzamPay refusal or failure does not raise: it is appended
    (FAILED, or UNKNOWN for a timeout/5xx; see the module doc) and returned in `result.error`; call
    `result.raise_for_error()` to turn it into the exception. `extra_properties` are merged into the
    checkout's additionalProperties (donation_id always wins), e.g. the sandbox's `sandbox_outcome`.
    """
    started = time.monotonic()

    def clock() -> datetime:
        return now + timedelta(seconds=time.monotonic() - started)

    _, provider = _account(msisdn, provider)
    donations = config.donations
    currency = (currency or donations.currency).upper()
    charge = charge_amount_of(amount, currency, config)
    if patient_id is not None and currency != donations.currency.upper():
        # patient_amount is credited as it is: patients' funding (required, received) has one currency
        raise InputError(
            f"currency {currency}: a patient's funding is counted in {donations.currency.upper()} (donations.currency); "
            f"give the amount in {donations.currency.upper()}, or make it a general donation"
        )
    with transaction(engine, immediate=True) as session:
        donation = create_donation(
            session,
            patient_id=patient_id,
            amount=amount,
            currency=currency,
            charge_amount=charge,
            charge_currency=donations.charge_currency,
            msisdn=msisdn,
            provider=provider,
            reference_prefix=donations.reference_prefix,
            now=now,
            patient_amount=patient_amount,
            support_amount=support_amount,
        )
        donation_id, reference = donation.id, donation.external_reference
        account, provider_name = donation.msisdn, donation.provider

    return _ask_azampay(
        engine, config, client, donation_id, reference, account, provider_name, charge, extra_properties, clock
    )


def initiate_portal_checkout(
    engine: Engine,
    config: Config,
    client: AzamPayClient,
    *,
    donation_id: int,
    msisdn: str,
    provider: str,
    now: datetime,
    extra_properties: dict[str, Any] | None = None,
) -> CheckoutResult:
    """Portal mode (docs/portal.md): the checkout of a PENDING donation the portal created, server to server,
    so that azamrecon learns AzamPay's transactionId itself (which the portal's own checkout stores nowhere).

    The portal's row is recorded first (an azamrecon checkout names it: azamrecon's), with its external
    reference, in a transaction under the fold lock; then AzamPay is asked and its answer recorded as for a
    donation of azamrecon's own (initiate_checkout). The charge is the portal's mobile-money charge."""
    started = time.monotonic()

    def clock() -> datetime:
        return now + timedelta(seconds=time.monotonic() - started)

    account, provider_name = _account(msisdn, provider)
    with transaction(engine, immediate=True) as session:
        SqlFoldStore(session).lock_checkpoint(CHECKPOINT)
        rows = PortalRows(session, config.portal).donations_by_ids([donation_id])
        if not rows:
            raise NotFound(f"portal donation {donation_id} not found")
        row = rows[0]
        if row.status != "PENDING":
            raise InputError(f"portal donation {donation_id} is {row.status}: only a PENDING donation is checked out")
        if (row.transaction_id or "").strip() or row.payment_gateway.strip() not in ("", *config.portal.owned_gateways):
            # the portal's own checkout (or another path) has it: a second charge could be pushed to the donor
            raise InputError(f"portal donation {donation_id} was checked out already (transaction_id or gateway set)")
        if row.currency.upper() != config.donations.charge_currency.upper():
            raise InputError(
                f"portal donation {donation_id} is in {row.currency}: AzamPay charges {config.donations.charge_currency}"
            )
        record_rows(session, config, [row], now, named={donation_id})
        if SeenRows(session).seen_donations([donation_id])[donation_id].owner != OWNED:
            raise InputError(
                f"portal donation {donation_id} is the portal's (recorded so): azamrecon cannot complete it"
            )
        donation = session.get(Donation, donation_id)
        if donation.transaction_id is not None:  # a retry would prompt the donor again
            raise InputError(f"portal donation {donation_id} has AzamPay transaction {donation.transaction_id} already")
        if donation.external_reference is None:  # a second checkout of one donation keeps its reference
            donation.external_reference = ReferenceFormat(config.donations.reference_prefix).reference(donation_id, now)
        donation.msisdn, donation.provider = account, provider_name
        reference, charge = donation.external_reference, donation.charge_amount
    return _ask_azampay(
        engine, config, client, donation_id, reference, account, provider_name, charge, extra_properties, clock
    )


def _account(msisdn: str, provider: str) -> tuple[str, str]:
    """(msisdn as stored, provider as AzamPay names it), or InputError."""
    if not msisdn or not str(msisdn).strip():
        raise InputError("msisdn is required for a checkout")
    if not provider or not str(provider).strip():
        raise InputError(f"provider is required for a checkout (one of {', '.join(PROVIDERS)})")
    account = normalise_msisdn(msisdn)
    if account is None:
        raise InputError(f"msisdn is not a Tanzanian mobile number: {msisdn!r}")
    return account, normalise_provider(provider)


def _ask_azampay(
    engine, config, client, donation_id, reference, account, provider_name, charge, extra_properties, clock
) -> CheckoutResult:
    """Ask AzamPay for the MNO checkout and record its answer: the transactionId on the donation plus a
    `checkout` event, in one transaction (or the failure, as the module doc's table says)."""
    donations = config.donations
    properties = dict(extra_properties or {})
    properties["donation_id"] = donation_id
    try:
        answer = client.mno_checkout(
            account,
            charge,
            reference,
            provider_name,
            currency=donations.charge_currency,
            additional_properties=properties,
        )
    except AzamPayError as exc:
        return _record_failure(engine, exc, donation_id, reference, charge, donations.charge_currency, clock())

    fields = EventFields(
        status=ACCEPTED,
        status_raw=_clip(answer.message, 255) or None,
        transaction_ref=_clip(answer.transaction_id, 255),
    )
    row = event_row(
        source=Source.CHECKOUT,
        body=answer.raw,
        received_at=clock(),
        auth=NOT_APPLICABLE,
        fields=fields,
        content_type="application/json",
        donation_id=donation_id,
    )
    try:
        with transaction(engine, immediate=True) as session:
            session.execute(
                update(Donation).where(Donation.id == donation_id).values(transaction_id=answer.transaction_id)
            )
            event_id = append_event(session, row)
    except StoreError as exc:
        # AzamPay accepted but we could not record it: make the transactionId recoverable from the logs,
        # and tell the caller not to retry (a retry would prompt the donor again).
        message = (
            f"donation {donation_id}, External ID: {reference}, transactionId {answer.transaction_id} "
            f"accepted by AzamPay but not recorded ({exc}); do not retry, the callback still resolves it"
        )
        payments.error(f"Error processing Azam Pay checkout: {message}")
        raise CheckoutNotRecorded(message, donation_id, reference, answer.transaction_id) from None
    payments.info(
        f"Initiated Azam Pay checkout - External ID: {reference}, donation {donation_id}, "
        f"transactionId {answer.transaction_id}, amount {charge} {donations.charge_currency}, provider {provider_name}"
    )
    return CheckoutResult(
        donation_id,
        reference,
        charge,
        donations.charge_currency,
        answer.transaction_id,
        ACCEPTED,
        event_id,
        answer.message,
    )


def _record_failure(
    engine: Engine,
    error: AzamPayError,
    donation_id: int,
    reference: str,
    charge: Decimal,
    charge_currency: str,
    received_at: datetime,
) -> CheckoutResult:
    status = UNKNOWN if isinstance(error, AzamPayUnavailable) else REJECTED
    label = "no answer" if status == UNKNOWN else "rejected"
    fields = EventFields(status=status, status_raw=_clip(f"checkout {label}: {error}", 255))
    row = event_row(
        source=Source.CHECKOUT,
        body=error_body(error, donation_id, reference),
        received_at=received_at,
        auth=NOT_APPLICABLE,
        fields=fields,
        content_type="application/json",
        donation_id=donation_id,
    )
    with transaction(engine, immediate=True) as session:
        event_id = append_event(session, row)
    if status == UNKNOWN:
        payments.info(f"Azam Pay checkout outcome unknown - External ID: {reference}, donation {donation_id}: {error}")
    else:
        payments.info(f"Azam Pay checkout rejected - donation {donation_id}, External ID: {reference}: {error}")
    return CheckoutResult(donation_id, reference, charge, charge_currency, None, status, event_id, str(error), error)

"""The portal checkout endpoint's request: its fields validated, every fault an InputError (a 400, never a 500)."""

from __future__ import annotations

from decimal import Decimal

from pipeline.config import Config
from pipeline.errors import InputError, ParseError
from pipeline.events import normalise_msisdn, parse_amount
from pipeline.store.donations import PROVIDERS, known_provider

MAX_ID = 2**63 - 1  # BIGINT: a larger id overflowed the driver (an OverflowError, answered 500)
AMOUNT_FIELDS = ("amount", "patient_amount", "support_amount")  # only the first is required
AMOUNT_FORMAT = (
    "must be a decimal string of ASCII digits with at most 2 decimal places, or an integer, "
    'below 1000000000000, e.g. "1000.00"'
)


def checkout_fields(data: dict, config: Config) -> dict:
    """A checkout request's validated fields (the portal's donation id in portal mode), or InputError."""
    if config.portal.enabled:  # the portal created the donation: its id, and where to send the prompt
        return _portal_fields(data)
    patient_id = data.get("patient_id")
    if patient_id is not None and (
        not isinstance(patient_id, int) or isinstance(patient_id, bool) or not 1 <= patient_id <= MAX_ID
    ):
        raise InputError(f"patient_id must be a positive integer up to {MAX_ID} (or null for a general donation)")
    msisdn, provider = _account(data)
    currency = data.get("currency") or config.donations.currency
    if not isinstance(currency, str):
        raise InputError("currency must be a string")
    amounts = {}
    for name in AMOUNT_FIELDS:
        if name == "amount" and data.get(name) is None:
            raise InputError("amount is required")
        amounts[name] = _amount(data.get(name), name)
    return {
        "patient_id": patient_id,
        **amounts,
        "msisdn": msisdn,
        "provider": provider,
        "currency": currency.upper(),
    }


def _portal_fields(data: dict) -> dict:
    donation_id = data.get("donation_id")
    if not isinstance(donation_id, int) or isinstance(donation_id, bool) or not 1 <= donation_id <= MAX_ID:
        raise InputError(f"donation_id must be the portal donation's id, a positive integer up to {MAX_ID}")
    msisdn, provider = _account(data)
    return {"donation_id": donation_id, "msisdn": msisdn, "provider": provider}


def _amount(value, name: str) -> Decimal | None:
    """A JSON string or integer read with the one money grammar (pipeline.events.parse_amount), or None
    when absent. Not a JSON float: its text is gone by the time the body is parsed. The amount must be
    positive; a share may be zero (all to the patient, or all to support), as `donations create` allows."""
    if value is None:
        return None
    try:
        amount = parse_amount(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    except ParseError:
        amount = None
    if amount is None:
        raise InputError(f"{name} {AMOUNT_FORMAT}")
    if amount <= 0 and name == "amount":
        raise InputError(f"{name} must be positive")
    return amount


def _account(data: dict) -> tuple[str, str]:
    """A checkout request's msisdn and provider, normalised, or InputError."""
    msisdn = normalise_msisdn(data.get("msisdn")) if isinstance(data.get("msisdn"), str) else None
    if msisdn is None:
        raise InputError("msisdn must be a Tanzanian mobile number: 0XXXXXXXXX, 255XXXXXXXXX or +255XXXXXXXXX")
    provider = known_provider(data.get("provider"))
    if provider is None:
        raise InputError(f"provider must be one of {', '.join(PROVIDERS)}")
    return msisdn, provider

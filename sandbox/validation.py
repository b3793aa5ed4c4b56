"""Request validation the way AzamPay answers it: ASP.NET ProblemDetails with errors{field: [message]}."""

from __future__ import annotations

import secrets
from decimal import Decimal, InvalidOperation
from typing import Any

from sandbox.outcomes import MSISDN_PATTERN

PROVIDERS = ("Airtel", "Tigo", "Halopesa", "Azampesa", "Mpesa")
PARTNER_CODES = {"Airtel": 2, "Tigo": 3, "Halopesa": 4, "Azampesa": 5, "Mpesa": 10}


def problem(errors: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "type": "https://tools.ietf.org/html/rfc7231#section-6.5.1",
        "title": "One or more validation errors occurred.",
        "status": 400,
        "traceId": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00",
        "errors": errors,
    }


def _required_string(body: dict[str, Any], name: str, errors: dict[str, list[str]]) -> str | None:
    value = body.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        errors[name] = [f"The {name} field is required."]
        return None
    if not isinstance(value, str):
        errors[name] = [f"The JSON value could not be converted to System.String. Path: $.{name}"]
        return None
    return value


def check_checkout(body: Any) -> dict[str, list[str]]:
    """Field errors for an MNO checkout body; empty when it is acceptable."""
    if not isinstance(body, dict):
        return {"$": ["The request body must be a JSON object."]}
    errors: dict[str, list[str]] = {}
    account = _required_string(body, "accountNumber", errors)
    if account is not None and not MSISDN_PATTERN.match(account):
        errors["accountNumber"] = [
            f"The field accountNumber must match the regular expression '{MSISDN_PATTERN.pattern}'."
        ]
    amount = _required_string(body, "amount", errors)
    if amount is not None:
        try:
            value = Decimal(amount)
        except InvalidOperation:
            value = None
        if value is None or not value.is_finite():
            errors["amount"] = ["The amount must be a number."]
        elif value <= 0:
            errors["amount"] = ["The amount must be greater than 0."]
    currency = _required_string(body, "currency", errors)
    if currency is not None and currency != "TZS":
        errors["currency"] = ["The currency must be TZS."]
    external_id = _required_string(body, "externalId", errors)
    if external_id is not None and (len(external_id) > 128 or not external_id.isascii()):
        errors["externalId"] = ["The externalId must be at most 128 ASCII characters."]
    provider = _required_string(body, "provider", errors)
    if provider is not None and provider not in PROVIDERS:
        errors["provider"] = [f"The provider must be one of {', '.join(PROVIDERS)}."]
    extra = body.get("additionalProperties")
    if extra is not None and not isinstance(extra, dict):
        errors["additionalProperties"] = ["The additionalProperties field must be an object."]
    return errors


def partners() -> list[dict[str, Any]]:
    return [
        {
            "id": f"partner-{code}",
            "logoUrl": f"https://sandbox.invalid/logos/{name.lower()}.png",
            "partnerName": name,
            "provider": code,
            "vendorName": "azamrecon sandbox",
            "paymentVendorId": "sandbox-vendor",
            "paymentPartnerId": f"partner-{code}",
            "paymentAcknowledgementRoute": "",
            "currency": "TZS",
            "status": "1",
            "vendorType": "MNO",
        }
        for name, code in PARTNER_CODES.items()
    ]

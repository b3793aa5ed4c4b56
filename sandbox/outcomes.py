"""The scripted outcomes: what the status endpoint says and which callbacks are sent for one checkout.

| outcome         | callbacks (transactionstatus, in order)                          | status `data` text       |
|-----------------|-------------------------------------------------------------------|--------------------------|
| success         | "success" once, at once                                           | Transaction successful.  |
| failure         | "failure" once (mnoreference null)                                | Transaction failed.      |
| cancelled       | "cancelled" once (mnoreference null)                              | Transaction cancelled.   |
| no_callback     | none                                                              | Transaction successful.  |
| duplicate       | "success" twice, identical bodies, duplicate_gap_seconds apart    | Transaction successful.  |
| delayed         | "success" once, delay_seconds after checkout                      | Transaction successful.  |
| out_of_order    | "failure", then "success" out_of_order_gap_seconds later          | Transaction successful.  |
| forged          | "success" once with a wrong "password"                            | Transaction successful.  |
| amount_mismatch | "success" once with amount = charged amount + 1                   | Transaction successful.  |
| unknown_status  | "REVERSAL_QUEUED" once                                            | Reversal queued.         |
| pending         | none                                                              | Transaction pending.     |

The status text is the transaction's truth from the moment of checkout (only the notification is late or
wrong), so a poll always settles the donation the way AzamPay would. "Transaction cancelled." maps to
FAILED with the default status patterns; "Reversal queued." matches none of them (UNKNOWN).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

OUTCOMES = (
    "success",
    "failure",
    "cancelled",
    "no_callback",
    "duplicate",
    "delayed",
    "out_of_order",
    "forged",
    "amount_mismatch",
    "unknown_status",
    "pending",
)

STATUS_SUCCESS = "Transaction successful."
STATUS_FAILED = "Transaction failed."
STATUS_CANCELLED = "Transaction cancelled."
STATUS_PENDING = "Transaction pending."
STATUS_ODD = "Reversal queued."

STATUS_TEXT = {
    "failure": STATUS_FAILED,
    "cancelled": STATUS_CANCELLED,
    "unknown_status": STATUS_ODD,
    "pending": STATUS_PENDING,
}

MSISDN_PATTERN = re.compile(r"^(0|255|\+255)?(6[1-9]|7[1-8])([0-9]{7})$")


def normalise_msisdn(msisdn: str) -> str:
    """Any accepted form -> 255XXXXXXXXX, so an outcome rule matches however the number is written."""
    match = MSISDN_PATTERN.match(msisdn.strip())
    return f"255{match.group(2)}{match.group(3)}" if match else msisdn.strip()


def check_outcome(name: Any) -> str:
    if name not in OUTCOMES:
        raise ValueError(f"unknown sandbox outcome {name!r}; expected one of {', '.join(OUTCOMES)}")
    return name


def status_text(outcome: str) -> str:
    return STATUS_TEXT.get(outcome, STATUS_SUCCESS)


@dataclass(frozen=True)
class Step:
    wait_seconds: float  # before this callback: after checkout for the first, after the previous send otherwise
    payload: dict[str, Any]


def callback_payload(
    txn: Any,
    transactionstatus: str,
    message: str,
    password: str | None,
    mnoreference: str | None,
    amount: str | None = None,
) -> dict[str, Any]:
    """The live shape (shared/fixtures/azampay/callback_live_shape_success.json)."""
    return {
        "message": message,
        "user": None,
        "password": password,
        "clientId": None,
        "transactionstatus": transactionstatus,
        "operator": txn.provider,
        "reference": txn.transaction_id,
        "externalreference": txn.transaction_id,
        "utilityref": txn.external_id,
        "amount": amount if amount is not None else txn.amount,
        "transid": txn.transaction_id,
        "msisdn": txn.msisdn,
        "mnoreference": mnoreference,
        "submerchantAcc": None,
        "additionalProperties": txn.additional_properties,
    }


def plan_callbacks(outcome: str, txn: Any, settings: Any, delay_seconds: float | None = None) -> list[Step]:
    password = settings.webhook_password or None
    mno = str(uuid.uuid4())

    def success(**overrides: Any) -> dict[str, Any]:
        return callback_payload(
            txn, "success", "SUCCESS", overrides.get("password", password), mno, overrides.get("amount")
        )

    if outcome in ("no_callback", "pending"):
        return []
    if outcome == "failure":
        return [Step(0.0, callback_payload(txn, "failure", "Insufficient balance", password, None))]
    if outcome == "cancelled":
        return [Step(0.0, callback_payload(txn, "cancelled", "Transaction cancelled by user", password, None))]
    if outcome == "duplicate":
        body = success()
        return [Step(0.0, body), Step(settings.duplicate_gap_seconds, dict(body))]
    if outcome == "delayed":
        return [Step(settings.delay_seconds if delay_seconds is None else delay_seconds, success())]
    if outcome == "out_of_order":
        failed = callback_payload(txn, "failure", "Transaction failed", password, None)
        return [Step(0.0, failed), Step(settings.out_of_order_gap_seconds, success())]
    if outcome == "forged":
        wrong = f"{password}-forged" if password else "forged-password"
        return [Step(0.0, success(password=wrong))]
    if outcome == "amount_mismatch":
        return [Step(0.0, success(amount=format(Decimal(txn.amount) + 1, "f")))]
    if outcome == "unknown_status":
        return [Step(0.0, callback_payload(txn, "REVERSAL_QUEUED", "Reversal queued", password, mno))]
    return [Step(0.0, success())]

"""What the AzamPayClient tests share: the fixtures directory, a number, a settable clock, a checkout."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

FIXTURES = Path(__file__).parents[1] / "fixtures" / "azampay"
MSISDN = "0628630936"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def checkout(client, msisdn=MSISDN, amount="25000", outcome=None):
    extra = {"sandbox_outcome": outcome} if outcome else None
    return client.mno_checkout(
        msisdn, Decimal(amount), "RHCI-DN-42-20260114093012", "Halopesa", additional_properties=extra
    )

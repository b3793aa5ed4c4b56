"""The sandbox's memory: issued tokens, transactions, outcome rules, counters and fault hooks. One lock."""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sandbox.outcomes import check_outcome, normalise_msisdn, status_text
from sandbox.settings import SandboxSettings


@dataclass
class Transaction:
    transaction_id: str
    external_id: str
    msisdn: str
    provider: str
    amount: str  # exactly as sent in checkout
    currency: str
    additional_properties: dict[str, Any]
    outcome: str
    status_text: str
    created_at: str
    callbacks_planned: int = 0
    status_calls: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SandboxState:
    settings: SandboxSettings
    lock: threading.Lock = field(default_factory=threading.Lock)
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry (epoch seconds)
    transactions: dict[str, Transaction] = field(default_factory=dict)
    counters: Counter = field(default_factory=Counter)
    reject_tokens_remaining: int = 0
    fail_remaining: int = 0
    fail_status: int = 503

    def __post_init__(self) -> None:
        self.settings.outcomes = {normalise_msisdn(k): check_outcome(v) for k, v in self.settings.outcomes.items()}
        check_outcome(self.settings.default_outcome)

    def count(self, name: str, by: int = 1) -> None:
        with self.lock:
            self.counters[name] += by

    # --- tokens and faults ---

    def issue_token(self, app_name: Any, client_id: Any, client_secret: Any) -> tuple[str, datetime] | None:
        s = self.settings
        if (
            client_id != s.client_id
            or client_secret != s.client_secret
            or (s.app_name is not None and app_name != s.app_name)
        ):
            self.count("token_refusals")
            return None
        token = "sbx." + secrets.token_urlsafe(24)
        expires = int(time.time()) + s.token_ttl_seconds
        with self.lock:
            if len(self.tokens) > 10_000:
                now = time.time()
                self.tokens = {t: e for t, e in self.tokens.items() if e > now}
            self.tokens[token] = expires
            self.counters["tokens_issued"] += 1
        return token, datetime.fromtimestamp(expires, UTC)

    def authorised(self, authorization: str | None, api_key: str | None) -> bool:
        token = (authorization or "")[7:] if (authorization or "").startswith("Bearer ") else None
        with self.lock:
            if self.reject_tokens_remaining > 0:
                self.reject_tokens_remaining -= 1
                self.counters["unauthorised"] += 1
                return False
            ok = api_key == self.settings.api_key and token is not None and self.tokens.get(token, 0) > time.time()
            if not ok:
                self.counters["unauthorised"] += 1
            return ok

    def reject_token(self, times: int = 1) -> None:
        with self.lock:
            self.reject_tokens_remaining = times

    def fail_next(self, times: int = 1, status: int = 503) -> None:
        with self.lock:
            self.fail_remaining, self.fail_status = times, status

    def injected_failure(self) -> int | None:
        with self.lock:
            if self.fail_remaining <= 0:
                return None
            self.fail_remaining -= 1
            self.counters["injected_failures"] += 1
            return self.fail_status

    # --- outcomes and transactions ---

    def set_outcomes(self, rules: dict[str, str]) -> None:
        checked = {normalise_msisdn(k): check_outcome(v) for k, v in rules.items()}
        with self.lock:
            self.settings.outcomes.update(checked)

    def outcome_for(self, msisdn: str, additional: dict[str, Any]) -> str:
        if "sandbox_outcome" in additional:
            return check_outcome(additional["sandbox_outcome"])
        with self.lock:
            return self.settings.outcomes.get(normalise_msisdn(msisdn), self.settings.default_outcome)

    def add_transaction(
        self,
        external_id: str,
        msisdn: str,
        provider: str,
        amount: str,
        outcome: str,
        currency: str = "TZS",
        additional_properties: dict[str, Any] | None = None,
        transaction_id: str | None = None,
    ) -> Transaction:
        txn = Transaction(
            transaction_id=transaction_id or uuid.uuid4().hex,
            external_id=external_id,
            msisdn=msisdn,
            provider=provider,
            amount=amount,
            currency=currency,
            additional_properties=additional_properties or {},
            outcome=check_outcome(outcome),
            status_text=status_text(outcome),
            created_at=datetime.now(UTC).isoformat(),
        )
        with self.lock:
            self.transactions[txn.transaction_id] = txn
        return txn

    def status_of(self, transaction_id: str) -> Transaction | None:
        with self.lock:
            self.counters["status_calls"] += 1
            txn = self.transactions.get(transaction_id)
            if txn is not None:
                txn.status_calls += 1
            return txn

    def set_status_text(self, transaction_id: str, text: str) -> Transaction:
        with self.lock:
            txn = self.transactions[transaction_id]
            txn.status_text = text
            return txn

    def transaction_list(self) -> list[dict[str, Any]]:
        with self.lock:
            return [t.as_dict() for t in self.transactions.values()]

    def stats(self) -> dict[str, int]:
        with self.lock:
            return {**self.counters, "transactions": len(self.transactions)}

"""The pure fold: (donation state, event) -> donation state, plus anomalies and a transition.

No SQLAlchemy, no clock, no I/O, no logging. The caller (pipeline/fold_batch.py) loads the states an
event batch touches, calls `fold_donation` for each, and writes the results through its store; jobs/fold.py
commits them in the same transaction as its checkpoint.

Why the final status cannot depend on order: a donation keeps order-independent aggregates (the
earliest trusted matching success, the earliest trusted failure, the latest operator decision, ...)
and its status is *derived* from them by `derive`. Anomalies describe what an event meant when it was
applied, so they do depend on order; the caller therefore always applies a donation's events in log
(id) order, replaying the donation from scratch when an older event turns up late.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from operator import attrgetter
from typing import NamedTuple

CENT = Decimal("0.01")  # money's precision, everywhere (stored, compared, printed)


class Status(StrEnum):
    """A donation's status, and an event's normalised transaction status (SUCCESS and UNKNOWN are events' only).

    A StrEnum so the values stay the plain strings stored in the database and written to logs."""

    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    REVIEW = "REVIEW"
    REFUNDED = "REFUNDED"  # portal mode only: the portal's staff refunded it (docs/portal.md)
    SUCCESS = "SUCCESS"
    UNKNOWN = "UNKNOWN"


class PatientStatus(StrEnum):
    """A patient's status: FULLY_FUNDED from the credit that crosses funding_required (patient_totals)."""

    FUNDING = "FUNDING"
    FULLY_FUNDED = "FULLY_FUNDED"


class Source(StrEnum):
    """Who appended an event to the log."""

    CALLBACK = "callback"
    POLL = "poll"
    CHECKOUT = "checkout"
    OPERATOR = "operator"
    IMPORT = "import"
    PORTAL = "portal"  # a fact read from the Django portal's own row (docs/portal.md)
    ADOPT = "adopt"  # the portal's truth at cutover, recorded by `azamrecon portal adopt`


PENDING, COMPLETED, FAILED, CANCELLED, EXPIRED, REVIEW = (
    Status.PENDING,
    Status.COMPLETED,
    Status.FAILED,
    Status.CANCELLED,
    Status.EXPIRED,
    Status.REVIEW,
)
SUCCESS, UNKNOWN, REFUNDED = Status.SUCCESS, Status.UNKNOWN, Status.REFUNDED
DONATION_STATUSES = (PENDING, COMPLETED, FAILED, CANCELLED, EXPIRED, REVIEW)  # REFUNDED: portal mode only
OPERATOR_STATUSES = (COMPLETED, FAILED, CANCELLED)
UNPAID_ENDINGS = (FAILED, CANCELLED, EXPIRED)  # final without payment: a success after one is late_success
TERMINAL_STATUSES = (COMPLETED, *UNPAID_ENDINGS)  # final statuses: replacing one needs an operator's confirmation


TRUSTED_SOURCES = (Source.POLL, Source.CHECKOUT, Source.OPERATOR, Source.PORTAL, Source.ADOPT)
# a callback's auth: a matching password vouches for the whole body; an RSA signature only for the fields
# it covers (utilityref, externalreference, transactionstatus, operator), so resolution reads only those
VERIFIED, SIGNED, UNVERIFIED, AUTH_FAILED, NOT_APPLICABLE = "verified", "signed", "unverified", "failed", "n/a"
AUTH_VALUES = (VERIFIED, SIGNED, UNVERIFIED, AUTH_FAILED, NOT_APPLICABLE)


class FoldEvent(NamedTuple):
    """The typed columns of a payment_events row that the fold reads. Never the body."""

    id: int
    received_at: datetime
    source: str
    auth: str
    status: str | None
    amount: Decimal | None
    utilityref: str | None = None
    externalreference: str | None = None
    donation_hint: str | None = None
    transaction_ref: str | None = None
    donation_id: int | None = None
    parse_error: str | None = None
    status_raw: str | None = None
    msisdn: str | None = None
    operator: str | None = None  # a portal fact's kind (PortalFact), on a portal event
    patient_id: int | None = None  # the patient a portal patient fact is about


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """Which events count (docs/fold.md, Trust). `credential_configured`: a webhook password or signature key is set."""

    credential_configured: bool = False
    verify_only: bool = False  # mode `verify`: callbacks never count, only poll answers
    # callback_auth, worked out once: `trusts` runs for every event of every fold batch
    _allowed: tuple[str, ...] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        allowed = () if self.verify_only else (VERIFIED, SIGNED) if self.credential_configured else None
        object.__setattr__(self, "_allowed", allowed)

    def callback_auth(self) -> tuple[str, ...] | None:
        """The auth values of the callbacks that count: None for any, () for none (also a query's filter)."""
        return self._allowed

    def trusts(self, event: FoldEvent) -> bool:
        allowed = self._allowed
        return event.source in TRUSTED_SOURCES or allowed is None or event.auth in allowed


@dataclass(slots=True)
class DonationState:
    """A donation's static facts plus every derived column (pipeline.models.Donation mirrors the names)."""

    id: int
    patient_id: int | None
    charge_amount: Decimal
    patient_amount: Decimal
    external_reference: str | None = None
    transaction_id: str | None = None
    msisdn: str | None = None
    provider: str | None = None
    # derived
    status: str = PENDING
    completed_at: datetime | None = None
    credit_event_id: int | None = None
    last_event_id: int | None = None
    events_applied: int = 0
    needs_check: bool = False
    success_event_id: int | None = None
    success_at: datetime | None = None
    amount_confirmed: bool = False  # some matching success stated the amount (a poll answer states none)
    review_event_id: int | None = None
    review_reason: str | None = None
    failure_event_id: int | None = None
    failure_at: datetime | None = None
    failure_status: str | None = None
    expired_event_id: int | None = None
    operator_event_id: int | None = None
    operator_at: datetime | None = None
    operator_status: str | None = None

    def reset(self) -> DonationState:
        """The state before any event: static facts kept, every derived field at its default."""
        return DonationState(*_STATIC_FIELDS(self))

    def copy(self) -> DonationState:
        # not dataclasses.replace, which walks the fields in Python each call: rebuild --check copies every touched state
        return DonationState(*_ALL_FIELDS(self))


STATIC_FIELDS = tuple(f.name for f in fields(DonationState))[:8]
DERIVED_FIELDS = tuple(f.name for f in fields(DonationState))[8:]
_ALL_FIELDS = attrgetter(*(f.name for f in fields(DonationState)))
_STATIC_FIELDS = attrgetter(*STATIC_FIELDS)


class AnomalyRecord(NamedTuple):
    event_id: int
    donation_id: int | None
    kind: str
    detail: str


class Transition(NamedTuple):
    """A status change caused by one event: what the logs announce."""

    donation_id: int
    event_id: int
    before: str
    after: str
    reference: str | None
    event_status: str | None
    source: str | None = None  # the event's: a portal fact's change is not announced as a callback's


class Credit(NamedTuple):
    donation_id: int
    patient_id: int | None
    amount: Decimal
    event_id: int
    credited_at: datetime


def _earlier(candidate: tuple[datetime, int], current_at: datetime | None, current_id: int | None) -> bool:
    return current_id is None or candidate < (current_at, current_id)


def amount_matches(state: DonationState, event: FoldEvent) -> bool:
    """Poll and checkout answers carry no amount: they confirm the transaction we asked for."""
    if event.amount is None:
        return event.source in TRUSTED_SOURCES
    return event.amount == state.charge_amount


def poll_confirms(event: FoldEvent, status: str) -> bool:
    """A poll answer that agrees with a terminal status is a record, not an anomaly. AzamPay's status API
    says only success, failure or pending, so a failure confirms FAILED and CANCELLED alike."""
    if event.source != Source.POLL:
        return False
    return (event.status == SUCCESS and status == COMPLETED) or (
        event.status == FAILED and status in (FAILED, CANCELLED)
    )


def derive(state: DonationState) -> None:
    """Status, completed_at and credit_event_id from the aggregates. Order-independent by construction.

    A success that states no amount (a poll answer) does not outrank a success with the wrong amount:
    the evidence conflicts, so the donation waits in REVIEW for an operator."""
    completed_at = credit_event_id = None
    if state.operator_status is not None:
        status = state.operator_status
        if status == COMPLETED:
            if state.success_event_id is not None:
                completed_at, credit_event_id = state.success_at, state.success_event_id
            else:
                completed_at, credit_event_id = state.operator_at, state.operator_event_id
    elif state.success_event_id is not None and (state.review_event_id is None or state.amount_confirmed):
        status, completed_at, credit_event_id = COMPLETED, state.success_at, state.success_event_id
    elif state.review_event_id is not None:
        status = REVIEW
    elif state.failure_status is not None:
        status = state.failure_status
    elif state.expired_event_id is not None:
        status = EXPIRED
    else:
        status = PENDING
    state.status, state.completed_at, state.credit_event_id = status, completed_at, credit_event_id


def _success(state: DonationState, event: FoldEvent, before: str) -> list[AnomalyRecord]:
    """A trusted success: the earliest matching one credits; one with another amount sends the donation to REVIEW."""
    raised: list[AnomalyRecord] = []
    if amount_matches(state, event):
        if state.success_event_id is None:
            if before in UNPAID_ENDINGS:
                raised.append(AnomalyRecord(event.id, state.id, "late_success", f"success after {before}"))
        elif not poll_confirms(event, before):
            raised.append(
                AnomalyRecord(
                    event.id, state.id, "duplicate", f"success already recorded by event {state.success_event_id}"
                )
            )
        if _earlier((event.received_at, event.id), state.success_at, state.success_event_id):
            state.success_event_id, state.success_at = event.id, event.received_at
        if event.amount is not None:
            state.amount_confirmed = True
    else:
        raised.append(
            AnomalyRecord(
                event.id,
                state.id,
                "amount_mismatch",
                f"amount {event.amount} differs from charge_amount {state.charge_amount}",
            )
        )
        if state.review_event_id is None or event.id < state.review_event_id:
            state.review_event_id = event.id
            state.review_reason = f"amount {event.amount} != {state.charge_amount}"[:200]
    return raised


def apply(state: DonationState, event: FoldEvent, policy: TrustPolicy) -> tuple[list[AnomalyRecord], Transition | None]:
    """Apply one event to `state` in place. Returns the anomalies it raised and the transition, if any."""
    before = state.status
    anomalies: list[AnomalyRecord] = []
    event_id = event.id

    state.events_applied += 1
    if state.last_event_id is None or event_id > state.last_event_id:
        state.last_event_id = event_id
    status = event.status

    if not policy.trusts(event):
        state.needs_check = True
        anomalies.append(
            AnomalyRecord(
                event_id,
                state.id,
                "unauthenticated",
                f"{event.source} auth={event.auth} status={status}; not trusted, poll requested",
            )
        )
    elif event.source == Source.OPERATOR:
        if status in OPERATOR_STATUSES:
            _decide(state, event)
    elif event.source in (Source.PORTAL, Source.ADOPT):
        anomalies.extend(_portal_fact(state, event))
    elif status == SUCCESS:
        anomalies.extend(_success(state, event, before))
    elif status in (FAILED, CANCELLED):
        if (before in (COMPLETED, REVIEW) or state.failure_status not in (None, status)) and not poll_confirms(
            event, before
        ):
            anomalies.append(AnomalyRecord(event_id, state.id, "conflicting_status", f"{status} after {before}"))
        if _earlier((event.received_at, event_id), state.failure_at, state.failure_event_id):
            state.failure_event_id, state.failure_at, state.failure_status = event_id, event.received_at, status
    elif status == EXPIRED:
        if state.expired_event_id is None or event_id < state.expired_event_id:
            state.expired_event_id = event_id
    elif status == PENDING:
        pass
    else:
        state.needs_check = True
        shown = event.status_raw or status
        shown = None if shown is None else str(shown)  # the plain text, also of a Status (its repr names the class)
        anomalies.append(
            AnomalyRecord(event_id, state.id, "unknown_status", f"{event.source} status {shown!r} not recognised")
        )

    derive(state)
    if state.status != before:
        return anomalies, Transition(
            state.id, event_id, before, state.status, state.external_reference, status, event.source
        )
    return anomalies, None


class PortalFact:  # a portal event's kind, in its `operator` column (docs/portal.md, "Facts in the log")
    OWNED, PORTAL, SEEN, CHANGED, STATUS = "owned", "portal", "seen", "changed", "status"
    EXTERNAL, ADOPT, LATE_SAVE, DELETED, CURRENCY_MISMATCH = (
        "external",
        "adopt",
        "late_save",
        "deleted",
        "currency_mismatch",
    )


def _portal_fact(state: DonationState, event: FoldEvent) -> list[AnomalyRecord]:
    """The portal decides the status of its own donations (Bill Pay, stablecoin, staff): each status it
    shows is taken as the latest decision, like an operator's. Of azamrecon's it decides only at adoption
    (its truth at cutover) and by a refund; any other change there is an external_write, queued for a poll,
    neither credited nor reverted (docs/portal.md, "Ownership")."""
    kind = (event.operator or "").split()
    raised = []
    if PortalFact.CURRENCY_MISMATCH in kind:
        raised.append(AnomalyRecord(event.id, state.id, "currency_mismatch", "not counted in the patient's funding"))
    decides = PortalFact.PORTAL in kind or event.source == Source.ADOPT or PortalFact.DELETED in kind
    if PortalFact.DELETED in kind and PortalFact.OWNED in kind:
        raised.append(AnomalyRecord(event.id, state.id, "external_write", "deleted in the portal; counts no more"))
    if PortalFact.LATE_SAVE in kind:
        detail = "portal status put back to PENDING by a late save(); azamrecon's status re-asserted once"
        raised.append(AnomalyRecord(event.id, state.id, "external_write", detail))
    elif PortalFact.EXTERNAL in kind:
        state.needs_check = True
        detail = (
            f"portal status set to {event.status_raw} by another writer; not credited, not reverted, poll requested"
        )
        raised.append(AnomalyRecord(event.id, state.id, "external_write", detail))
        decides = event.status == REFUNDED
    if decides:
        _decide(state, event)
    return raised


def _decide(state: DonationState, event: FoldEvent) -> None:  # the latest decision, by log id, sets the status
    if state.operator_event_id is None or event.id > state.operator_event_id:
        state.operator_event_id, state.operator_at, state.operator_status = event.id, event.received_at, event.status


def fold_donation(
    state: DonationState, events: Iterable[FoldEvent], policy: TrustPolicy
) -> tuple[list[AnomalyRecord], list[Transition]]:
    """Apply events in the given order; the caller passes them in log (id) order."""
    anomalies: list[AnomalyRecord] = []
    transitions: list[Transition] = []
    for event in events:
        raised, transition = apply(state, event, policy)
        anomalies.extend(raised)
        if transition is not None:
            transitions.append(transition)
    return anomalies, transitions


def credit_of(state: DonationState) -> Credit | None:
    """The funding credit a donation in this state carries: patient_amount once COMPLETED, else none."""
    if state.status != COMPLETED:
        return None
    return Credit(state.id, state.patient_id, state.patient_amount, state.credit_event_id, state.completed_at)

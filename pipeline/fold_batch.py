"""The fold's batch rules: a batch of log events -> donation states, anomalies, credit changes, patient totals.

Pure like pipeline/fold.py (no SQLAlchemy, no clock, no logging): every read and write goes through a
`FoldStore` (pipeline.store.state.SqlFoldStore, or pipeline.store.memory.MemoryFoldStore for
`rebuild --check` and `--as-of`). jobs/fold.py owns the transaction, the checkpoint, the gaps, the retry
and the announcements around it. docs/fold.md lists where each rule lives.

What a batch decides here: the `invalid_payload` and `unknown_reference`/`reference_conflict` anomalies,
which donation each event resolves to (pipeline.resolution), the replay from scratch of a donation an
older event reaches late, the credit changes, and the patient totals.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pipeline.fold import (
    AnomalyRecord,
    Credit,
    DonationState,
    FoldEvent,
    Source,
    Transition,
    TrustPolicy,
    credit_of,
    fold_donation,
)
from pipeline.patient_funding import PatientTotals, patient_totals, patient_update
from pipeline.resolution import (
    CONFLICT_KIND,
    DEFAULT_FORMAT,
    TRANSACTION,
    DonationIndex,
    ReferenceFormat,
    Resolution,
    decide,
    lookup_keys,
    wanted_values,
)

if TYPE_CHECKING:
    from pipeline.config import Config


def trust_policy(config: Config) -> TrustPolicy:
    """Which events count (docs/fold.md, Trust): the webhook settings as the fold's TrustPolicy."""
    return TrustPolicy(
        credential_configured=config.webhook.credential_configured, verify_only=config.webhook.mode == "verify"
    )


def counting_callback_auth(config: Config) -> tuple[str, ...] | None:
    """The auth values of the callbacks that count, for a query (TrustPolicy.callback_auth)."""
    return trust_policy(config).callback_auth()


def reference_format(config: Config) -> ReferenceFormat:
    return ReferenceFormat(config.donations.reference_prefix)


class FoldStore(Protocol):
    """What fold_batch needs; SqlFoldStore and MemoryFoldStore provide it (tests/test_fold_store_contract.py)."""

    def donations_matching(self, wanted) -> dict[int, DonationState]: ...
    def events_by_ids(self, ids) -> list[FoldEvent]: ...
    def write_donations(self, states) -> None: ...
    def add_anomalies(self, anomalies) -> None: ...
    def drop_anomalies(self, donation_ids=(), waiting_events=()) -> None: ...
    def applied_events(self, donation_ids) -> dict[int, list[int]]: ...
    def add_applied(self, pairs) -> None: ...
    def set_waiting(self, dropped, added) -> None: ...
    def apply_credit_changes(self, changes) -> None: ...
    def patients(self, ids): ...
    def credits_of_patients(self, ids): ...
    def credits_of_donations(self, ids): ...
    def write_patients(self, totals) -> None: ...


@dataclass
class BatchResult:
    events: int = 0
    transitions: list[tuple[Transition, DonationState]] = field(default_factory=list)
    credits_added: int = 0
    credits_removed: int = 0
    anomalies: int = 0
    patients: dict[int, PatientTotals] = field(default_factory=dict)
    patient_required: dict[int, object] = field(default_factory=dict)
    donations: set[int] = field(default_factory=set)


def fold_batch(
    store: FoldStore,
    events: list[FoldEvent],
    retried: list[FoldEvent],
    policy: TrustPolicy,
    references: ReferenceFormat = DEFAULT_FORMAT,
) -> BatchResult:
    """Apply new events (and waiting events retried against new donations) through `store`."""
    result = BatchResult(events=len(events))
    everything = sorted(events + retried)  # by id: ids are unique, so tuples compare on their first field
    # a portal patient's facts (docs/portal.md) name no donation: their patient's totals are recomputed
    patient_facts = {event.patient_id for event in everything if event.patient_id is not None}
    if patient_facts:
        everything = [event for event in everything if event.patient_id is None]
    states, decisions, keys = _resolve_all(store, everything, references)

    anomalies: list[AnomalyRecord] = []
    by_donation: dict[int, list[FoldEvent]] = {}
    waiting: list[tuple[FoldEvent, tuple]] = []
    for event, decision, event_keys in zip(everything, decisions, keys, strict=True):
        if event.parse_error:
            anomalies.append(AnomalyRecord(event.id, None, "invalid_payload", event.parse_error[:500]))
            continue
        donation_id = decision.donation_id
        if donation_id is None:
            anomalies.append(_waiting_anomaly(event, decision))
            waiting.append((event, event_keys))
            continue
        if donation_id in by_donation:
            by_donation[donation_id].append(event)
        else:
            by_donation[donation_id] = [event]

    # a donation is replayed when an older event reaches it late, or when the portal's facts of it changed
    # (amounts, currency, patient: docs/portal.md), which its earlier events are judged against again
    replayed = [
        donation_id
        for donation_id, donation_events in by_donation.items()
        if states[donation_id].last_event_id is not None
        and (
            donation_events[0].id <= states[donation_id].last_event_id
            or any(event.source in (Source.PORTAL, Source.ADOPT) for event in donation_events)
        )
    ]
    applied = store.applied_events(replayed) if replayed else {}
    to_fetch = {event_id for ids in applied.values() for event_id in ids}
    earlier = {event.id: event for event in store.events_by_ids(to_fetch)} if to_fetch else {}

    changes: list[tuple[Credit | None, Credit | None]] = []
    changed_states: list[DonationState] = []
    replay_set = set(replayed)
    # a replayed donation's credit as stored: the portal may have changed the facts it was computed from
    # (patient_amount, patient, currency), which the loaded state already holds
    stored = store.credits_of_donations(replayed) if replayed else {}
    for donation_id, donation_events in by_donation.items():
        state = states[donation_id]
        before_status = state.status
        before_credit = stored.get(donation_id) if donation_id in replay_set else credit_of(state)
        if donation_id in replay_set:
            merged = {event_id: earlier[event_id] for event_id in applied.get(donation_id, ()) if event_id in earlier}
            merged.update((event.id, event) for event in donation_events)
            donation_events = [merged[event_id] for event_id in sorted(merged)]
            state = states[donation_id] = state.reset()
        raised, transitions = fold_donation(state, donation_events, policy)
        anomalies.extend(raised)
        changed_states.append(state)
        after_credit = credit_of(state)
        if after_credit != before_credit:
            changes.append((before_credit, after_credit))
        if state.status != before_status and transitions:
            last = transitions[-1]
            result.transitions.append((last._replace(before=before_status), state))
    result.donations = set(by_donation)

    # a retried event's anomaly is raised again from what it resolves to now, as a rebuild would raise it
    store.drop_anomalies(donation_ids=replayed, waiting_events=[event.id for event in retried])
    store.set_waiting([event.id for event in retried], waiting)
    # new, gap-filled and retried events were never applied before: each gets its row once
    store.add_applied(
        [(event.id, donation_id) for donation_id, donation_events in by_donation.items() for event in donation_events]
    )
    store.write_donations(changed_states)
    store.add_anomalies(anomalies)
    store.apply_credit_changes(changes)
    result.anomalies = len(anomalies)
    result.credits_added = sum(1 for old, new in changes if old is None)
    result.credits_removed = sum(1 for old, new in changes if new is None)
    _update_patients(store, changes, result, patient_facts)
    return result


def _waiting_anomaly(event: FoldEvent, decision: Resolution) -> AnomalyRecord:
    """The anomaly of an event that resolved to no donation; its event waits for one (WAITING_KINDS)."""
    if decision.conflict is not None:
        return AnomalyRecord(event.id, decision.candidate, CONFLICT_KIND, decision.conflict[:500])
    detail = event.utilityref or event.externalreference or event.transaction_ref or str(event.donation_id)
    return AnomalyRecord(event.id, None, "unknown_reference", f"no donation for {detail}"[:500])


def _resolve_all(
    store: FoldStore, events: list[FoldEvent], references: ReferenceFormat
) -> tuple[dict[int, DonationState], list[Resolution], list[tuple]]:
    """(the donation states the events name, each event's Resolution, each event's keys), as
    pipeline.resolution.decide over every donation decides. References and ids are looked up first;
    transaction ids only for the events that no reference or own donation_id resolved: most events carry
    one, so most transaction look-ups are saved. A strong key that matches wins, so what the first
    look-up resolved stays."""
    keys = [lookup_keys(event, references) for event in events]
    first = wanted_values(key for event_keys in keys for key in event_keys if key.column != TRANSACTION)
    states = store.donations_matching(first)
    index = DonationIndex()
    for state in states.values():
        index.add(state)
    decisions = [decide(event, event_keys, index) for event, event_keys in zip(events, keys, strict=True)]
    again = [
        i
        for i, decision in enumerate(decisions)
        if not _strong(decision, keys[i], index) and any(key.column == TRANSACTION for key in keys[i])
    ]
    if again:
        found = store.donations_matching(
            wanted_values(key for i in again for key in keys[i] if key.column == TRANSACTION)
        )
        for donation_id, state in found.items():
            if donation_id not in states:
                states[donation_id] = state
                index.add(state)
        for i in again:
            decisions[i] = decide(events[i], keys[i], index)
    return states, decisions, keys


def _strong(decision: Resolution, keys, index: DonationIndex) -> bool:
    """Whether a strong key the first look-up covered (a reference or an own donation_id, which come
    before every transaction id) made this decision, so no transaction id can change it."""
    return decision.donation_id is not None and any(
        key.strong and key.column != TRANSACTION and index.find(key) == decision.donation_id for key in keys
    )


def _update_patients(
    store: FoldStore,
    changes: list[tuple[Credit | None, Credit | None]],
    result: BatchResult,
    recompute_also: set[int] = frozenset(),
) -> None:
    """Each touched patient's totals: patient_update from the credit changes where it can place
    fully_funded_at, else patient_totals over every credit of the patient (always, for `recompute_also`:
    patients whose funding_required may have changed)."""
    by_patient: dict[int, list[tuple[Credit | None, Credit | None]]] = defaultdict(list)
    for old, new in changes:
        for patient_id in {
            credit.patient_id for credit in (old, new) if credit is not None and credit.patient_id is not None
        }:
            by_patient[patient_id].append(
                (
                    old if old and old.patient_id == patient_id else None,
                    new if new and new.patient_id == patient_id else None,
                )
            )
    if not by_patient and not recompute_also:
        return
    patients = store.patients(set(by_patient) | set(recompute_also))
    totals: dict[int, PatientTotals] = {}
    recompute: list[int] = [patient_id for patient_id in recompute_also if patient_id in patients]
    for patient_id, patient_changes in by_patient.items():
        if patient_id in recompute_also:
            continue
        patient = patients[patient_id]
        updated = patient_update(
            patient.funding_required, patient.funding_received, patient.status, patient.fully_funded_at, patient_changes
        )
        if updated is None:
            recompute.append(patient_id)
        else:
            totals[patient_id] = updated
    if recompute:
        credits = store.credits_of_patients(recompute)
        for patient_id in recompute:
            totals[patient_id] = patient_totals(patients[patient_id].funding_required, credits.get(patient_id, []))
    store.write_patients(totals)
    result.patients = totals
    result.patient_required = {patient_id: patients[patient_id].funding_required for patient_id in totals}

"""Every anomaly kind the fold raises and what it means, in report order (pipeline/fold.py raises them)."""

# docs/fold.md has the full rules; `report` and /metrics print these
ANOMALY_MEANINGS = {
    "unknown_reference": "no donation matches the event's references or ids; retried when one appears",
    "amount_mismatch": "a trusted success states another amount than the charge, or none usable; REVIEW",
    "conflicting_status": "a failure after COMPLETED or REVIEW, or disagreeing with an earlier failure",
    "late_success": "a success after FAILED, CANCELLED or EXPIRED; it wins",
    "unauthenticated": "an untrusted callback; the poller is asked to check",
    "unknown_status": "a status the fold does not know; the poller is asked to check",
    "invalid_payload": "the body could not be parsed",
    "duplicate": "a second matching success; nothing more is credited",
    "reference_conflict": "a donation named only by an id, and a stated fact disagrees (or two donations named); nothing moved",
    "external_write": "portal mode: another writer changed the status of a donation azamrecon owns; not credited, not reverted",
    "currency_mismatch": "portal mode: the donation's currency is not its patient's funding_currency; not counted for the patient",
}
ANOMALY_KINDS = tuple(ANOMALY_MEANINGS)

"""Which donation an event is about: the one resolution rule (docs/fold.md, "Resolving an event").

`lookup_keys` lists, in resolution order, every fact an event states that can name a donation, with the
donation column it is matched against. `decide` picks the donation from them. The receiver's 200/404,
the fold, `rebuild --check` and the index of waiting events all call these two functions, so they
cannot drift apart. Pure: no SQL, no clock, no logging.

Strong keys (the exact stored reference, the exact stored transaction id, or the id on an event we
appended ourselves) resolve on their own. Weak keys (the id in additionalProperties.donation_id, the id
inside a `{prefix}-{id}-...` reference) are small integers that other systems reuse, so a donation they
name is accepted only when every fact the event states that the donation also has agrees.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from pipeline.events import normalise_msisdn
from pipeline.fold import SIGNED
from pipeline.privacy import is_retained

REFERENCE, TRANSACTION, ID = "external_reference", "transaction_id", "id"  # donation columns
CONFLICT_KIND = "reference_conflict"
WAITING_KINDS = ("unknown_reference", CONFLICT_KIND)  # anomalies whose events wait for a donation to match


class Key(NamedTuple):
    field: str  # the event field that states it
    column: str  # the donation column it is matched against
    value: Any
    strong: bool


class Resolution(NamedTuple):
    donation_id: int | None
    conflict: str | None = None  # why the facts that name a donation were refused
    candidate: int | None = None  # the one existing donation the refused facts name, if one


NOT_FOUND = Resolution(None)


def as_id(text: str | None) -> int | None:
    """A stated donation id. ASCII digits only: '²' passes str.isdigit() but not int()."""
    if text and len(text) < 19 and text.isascii() and text.isdigit():
        return int(text)
    return None


@dataclass(frozen=True, slots=True)
class ReferenceFormat:
    """Our external references, `{prefix}-{donation id}-{YYYYmmddHHMMSS}` (donations.reference_prefix):
    the one place that writes them and reads a donation id back out of them."""

    prefix: str = "RHCI-DN"

    def reference(self, donation_id: int, created_at: datetime) -> str:
        return f"{self.prefix}-{donation_id}-{created_at:%Y%m%d%H%M%S}"

    def donation_id(self, reference: str | None) -> int | None:
        """The id in a reference of exactly our form, else None. Exactly: a signature covers utilityref and
        externalreference joined, so a re-split must not read as a reference we issued."""
        head = self.prefix + "-"
        if not reference or not reference.startswith(head):
            return None
        number, dash, stamp = reference[len(head) :].partition("-")
        if not (dash and len(stamp) == 14 and stamp.isascii() and stamp.isdigit()):
            return None
        return as_id(number)


DEFAULT_FORMAT = ReferenceFormat()


def lookup_keys(
    event: Any, references: ReferenceFormat = DEFAULT_FORMAT, signed: bool | None = None
) -> tuple[Key, ...]:
    """The keys of an event (a FoldEvent, or the receiver's EventFields), strong ones first, in order.

    A callback verified by its RSA signature (auth `signed`, or signed=True) names its donation only
    through the fields the signature covers: utilityref and externalreference, as our exact stored
    reference or as `{prefix}-{id}-...` of a donation that stores none. The signature covers their
    concatenation only, so a re-split of the two must still reproduce a reference we issued; the
    unsigned transaction ids and additionalProperties.donation_id could name any donation."""
    donation_id = getattr(event, "donation_id", None)
    if donation_id is not None:  # poll, checkout and operator events name their donation themselves
        return (Key("donation_id", ID, donation_id, True),)
    if signed is None:
        signed = getattr(event, "auth", None) == SIGNED
    utilityref, externalreference = event.utilityref or None, event.externalreference or None
    transaction_ref = None if signed else event.transaction_ref or None
    keys = []
    if utilityref:
        keys.append(Key("utilityref", REFERENCE, utilityref, True))
    if externalreference:
        keys.append(Key("externalreference", REFERENCE, externalreference, True))
    if transaction_ref:
        keys.append(Key("transaction_ref", TRANSACTION, transaction_ref, True))
    if externalreference and not signed:
        keys.append(Key("externalreference", TRANSACTION, externalreference, True))
    hint = None if signed else as_id(event.donation_hint)
    if hint is not None:
        keys.append(Key("donation_hint", ID, hint, False))
    for name, reference in (("utilityref", utilityref), ("externalreference", externalreference)):
        embedded = references.donation_id(reference)
        if embedded is not None:
            keys.append(Key(name, ID, embedded, False))
    return tuple(keys)


class DonationFacts(NamedTuple):
    """What resolution compares; pipeline.fold.DonationState has the same attributes."""

    id: int
    external_reference: str | None
    transaction_id: str | None
    msisdn: str | None
    provider: str | None


@dataclass(slots=True)
class DonationIndex:
    """Donations by each column a key is matched against. Matching is exact (a MySQL IN also matches other
    letter cases, so stores look up candidates and this index decides)."""

    facts: dict[int, Any] = field(default_factory=dict)
    by_reference: dict[str, int] = field(default_factory=dict)
    by_transaction: dict[str, int] = field(default_factory=dict)

    def add(self, donation: Any) -> None:
        self.facts[donation.id] = donation
        if donation.external_reference:
            self.by_reference[donation.external_reference] = donation.id
        if donation.transaction_id:
            self.by_transaction[donation.transaction_id] = donation.id

    def find(self, key: Key) -> int | None:
        if key.column == ID:
            return key.value if key.value in self.facts else None
        return (self.by_reference if key.column == REFERENCE else self.by_transaction).get(key.value)


def decide(event: Any, keys: tuple[Key, ...], index: DonationIndex) -> Resolution:
    """The donation `keys` (lookup_keys(event)) resolve to in `index`, or why they do not.

    The first strong key that matches wins. Otherwise the weak keys must all name one donation, and every
    fact the event states that this donation also has must agree with it."""
    weak = []
    for key in keys:
        if key.strong:
            found = index.find(key)
            if found is not None:
                return Resolution(found)
        else:
            weak.append(key)
    named = sorted({key.value for key in weak})
    present = [donation_id for donation_id in named if donation_id in index.facts]
    if not present:
        return NOT_FOUND
    by = ", ".join(dict.fromkeys(key.field for key in weak))
    if len(named) > 1:
        return Resolution(
            None, f"{by} name donations {', '.join(map(str, named))}", present[0] if len(present) == 1 else None
        )
    donation = index.facts[present[0]]
    problems = disagreements(event, keys, donation)
    if problems:
        return Resolution(None, f"donation {donation.id} named by {by}, but " + "; ".join(problems), donation.id)
    return Resolution(donation.id)


def disagreements(event: Any, keys: Iterable[Key], donation: Any) -> list[str]:
    """The facts an event states that contradict what `donation` stores. Only facts both have count, except
    a stated transaction id, which waits for the donation's checkout to store one (_transaction_problem)."""
    problems = []
    ours = {key.field for key in keys if not key.strong and key.field != "donation_hint"}
    for name in ("utilityref", "externalreference"):
        reference = getattr(event, name) or None
        if reference is None:
            continue
        if name in ours:  # one of our references: it must be this donation's (an exact one is a strong key)
            if donation.external_reference:
                problems.append(f"{name} {reference!r} is not its reference")
        elif name == "utilityref":  # utilityref carries our externalId
            problems.append(f"utilityref {reference!r} is not a reference we issued")
        else:  # externalreference that is not ours is AzamPay's transaction id
            problems.extend(_transaction_problem(name, reference, donation))
    if event.transaction_ref:
        problems.extend(_transaction_problem("reference/transid", event.transaction_ref, donation))
    msisdn = getattr(event, "msisdn", None)
    # a number past its retention (pipeline.privacy) is no longer a number: it is not compared, so the
    # answer does not change when the event's own number is retained later (incremental == rebuild)
    if msisdn and donation.msisdn and not is_retained(msisdn) and not is_retained(donation.msisdn):
        if (normalise_msisdn(msisdn) or msisdn) != donation.msisdn:
            problems.append("msisdn differs")
    operator = getattr(event, "operator", None)
    if operator and donation.provider and operator_key(operator) != operator_key(donation.provider):
        problems.append(f"operator {operator!r} is not its provider {donation.provider}")
    return problems


_OPERATOR_ALIASES = {
    "mixx": "tigo",
    "mixxbyyas": "tigo",
    "yas": "tigo",
    "tigopesa": "tigo",
    "vodacom": "mpesa",
    "airtelmoney": "airtel",
    "halotel": "halopesa",
    "azampay": "azampesa",
}


def _transaction_problem(name: str, value: str, donation: Any) -> list[str]:
    """A stated AzamPay transaction id must be the donation's. Before its checkout stored one it cannot be
    checked yet: the event waits (reference_conflict) and is decided again when the checkout offers its
    id, as a rebuild, which sees the stored id, decides it."""
    if not donation.transaction_id:
        return [f"{name} {value!r} cannot be checked yet: no transaction id is stored for it"]
    if value != donation.transaction_id:
        return [f"{name} {value!r} is not its transaction id"]
    return []


def operator_key(name: str) -> str:
    """A callback's `operator` and a checkout's provider, compared loosely: 'M-Pesa' is 'Mpesa'."""
    key = re.sub(r"[^a-z0-9]", "", name.casefold())
    return _OPERATOR_ALIASES.get(key, key)


def wanted_values(keys: Iterable[Key]) -> dict[str, set]:
    """Column -> the values a store must look up to decide these keys."""
    wanted: dict[str, set] = {REFERENCE: set(), TRANSACTION: set(), ID: set()}
    for key in keys:
        wanted[key.column].add(key.value)
    return wanted

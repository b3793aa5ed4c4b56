"""Portal mode's SQL (docs/portal.md): reading the Django portal's donation and patient rows by their
configured names, and azamrecon's record of them (portal_donations, portal_patients, portal_sync, and the
mirror rows in its own donations and patients tables that the fold reads).

The portal's tables are Django's: DECIMAL(10,2) on MySQL but REAL or TEXT on SQLite, and naive UTC
datetimes (USE_TZ), so their values are converted here rather than by azamrecon's column types.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import insert, select, text, update
from sqlalchemy.orm import Session

from pipeline.fold import CENT
from pipeline.models import Donation, Patient, PortalDonationSeen, PortalPatientSeen, PortalSync, WaitingKey
from pipeline.portal_facts import PortalDonation, PortalPatient, in_flight_reference, references_of
from pipeline.resolution import ID, REFERENCE, DonationFacts, ReferenceFormat
from pipeline.sections import PortalConfig
from pipeline.store.driver import chunks

SCAN_CHUNK = 2_000  # portal rows read per statement in a full comparison


def _money(value) -> Decimal:
    if value is None:
        return Decimal("0.00")
    return Decimal(str(value)).quantize(CENT)


def _when(value) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _naive(value: datetime | None):
    return None if value is None else value.astimezone(UTC).replace(tzinfo=None)


class PortalRows:
    """The portal's two tables, read (and written, by pipeline/portal_write.py) on the session's connection."""

    def __init__(self, session: Session, config: PortalConfig):
        self.session = session
        self.config = config
        quote = session.connection().dialect.identifier_preparer.quote
        self.q = quote
        d, p = config.donation_columns, config.patient_columns
        self.donations_table = quote(config.donation_table)
        self.patients_table = quote(config.patient_table)
        self._donation_select = (
            "SELECT "
            + ", ".join(
                quote(name)
                for name in (
                    d.id,
                    d.patient_id,
                    d.amount,
                    d.patient_amount,
                    d.currency,
                    d.status,
                    d.transaction_id,
                    d.payment_gateway,
                    d.payment_method,
                    d.gateway_reference,
                    d.failure_reason,
                    d.completed_at,
                    d.created_at,
                )
            )
            + f" FROM {self.donations_table}"
        )
        self._patient_select = (
            "SELECT "
            + ", ".join(
                quote(name)
                for name in (p.id, p.full_name, p.funding_required, p.funding_received, p.funding_currency, p.status)
            )
            + f" FROM {self.patients_table}"
        )
        self.donation_id = quote(d.id)
        self.patient_id = quote(p.id)

    # -- reading ------------------------------------------------------------------------------------
    def _donations(self, where: str, params: dict) -> list[PortalDonation]:
        rows = self.session.execute(text(f"{self._donation_select} {where}"), params).all()
        return [
            PortalDonation(
                int(r[0]),
                None if r[1] is None else int(r[1]),
                _money(r[2]),
                _money(r[3]),
                (r[4] or "").strip(),
                (r[5] or "").strip(),
                r[6],
                r[7] or "",
                r[8] or "",
                r[9],
                r[10] or "",
                _when(r[11]),
                _when(r[12]),
            )
            for r in rows
        ]

    def donations_above(self, high: int) -> list[PortalDonation]:
        return self._donations(f"WHERE {self.donation_id} > :high ORDER BY {self.donation_id}", {"high": high})

    def donations_by_ids(self, ids: Iterable[int]) -> list[PortalDonation]:
        found: list[PortalDonation] = []
        for part in chunks(sorted(set(ids))):
            marks = ", ".join(f":i{n}" for n in range(len(part)))
            found += self._donations(
                f"WHERE {self.donation_id} IN ({marks})", {f"i{n}": value for n, value in enumerate(part)}
            )
        return found

    def donations_by_transaction(self, values: Iterable[str]) -> list[PortalDonation]:
        column = self.q(self.config.donation_columns.transaction_id)
        found: list[PortalDonation] = []
        for part in chunks(sorted(set(values))):
            marks = ", ".join(f":v{n}" for n in range(len(part)))
            found += self._donations(f"WHERE {column} IN ({marks})", {f"v{n}": value for n, value in enumerate(part)})
        return found

    def all_donations(self) -> Iterator[list[PortalDonation]]:
        """Every donation row, in id order, a chunk at a time (keyset pagination: no long-held cursor)."""
        high = -1
        while True:
            rows = self._donations(
                f"WHERE {self.donation_id} > :high ORDER BY {self.donation_id} LIMIT {SCAN_CHUNK}", {"high": high}
            )
            if not rows:
                return
            yield rows
            high = rows[-1].id

    def _patients(self, where: str, params: dict) -> list[PortalPatient]:
        rows = self.session.execute(text(f"{self._patient_select} {where}"), params).all()
        return [
            PortalPatient(int(r[0]), r[1] or "", _money(r[2]), _money(r[3]), (r[4] or "").strip(), (r[5] or "").strip())
            for r in rows
        ]

    def patients_by_ids(self, ids: Iterable[int]) -> dict[int, PortalPatient]:
        found: dict[int, PortalPatient] = {}
        for part in chunks(sorted(set(ids))):
            marks = ", ".join(f":i{n}" for n in range(len(part)))
            for row in self._patients(
                f"WHERE {self.patient_id} IN ({marks})", {f"i{n}": value for n, value in enumerate(part)}
            ):
                found[row.id] = row
        return found

    def all_patients(self) -> dict[int, PortalPatient]:
        return {row.id: row for row in self._patients(f"ORDER BY {self.patient_id}", {})}

    def own_funding(self, patients: dict[int, PortalPatient]) -> dict[int, Decimal]:
        """Each patient's funding by the portal's own definition (its funding_received_actual): Σ patient_amount
        of its COMPLETED donations, counting only those in the patient's funding_currency."""
        sums = self.completed_sums()
        return {
            patient_id: sums.get((patient_id, row.funding_currency.upper()), Decimal("0.00"))
            for patient_id, row in patients.items()
        }

    def completed_sums(self) -> dict[tuple[int, str], Decimal]:
        """(patient id, currency) -> the portal's own funding: Σ patient_amount of its COMPLETED donations."""
        d = self.config.donation_columns
        rows = self.session.execute(
            text(
                f"SELECT {self.q(d.patient_id)}, {self.q(d.currency)}, SUM({self.q(d.patient_amount)}) "
                f"FROM {self.donations_table} WHERE {self.q(d.status)} = 'COMPLETED' "
                f"AND {self.q(d.patient_id)} IS NOT NULL GROUP BY {self.q(d.patient_id)}, {self.q(d.currency)}"
            )
        ).all()
        return {(int(patient), (currency or "").strip().upper()): _money(total) for patient, currency, total in rows}


class SeenRows:
    """azamrecon's own record of the portal's rows: what it recorded in the log, and the mirror rows."""

    def __init__(self, session: Session):
        self.session = session

    def sync_state(self) -> PortalSync:
        row = self.session.get(PortalSync, 1)
        if row is None:
            row = PortalSync(id=1, donation_high=0, gaps="{}", scanned_at=None)
            self.session.add(row)
            self.session.flush()
        return row

    def seen_donations(self, ids: Iterable[int]) -> dict[int, PortalDonationSeen]:
        found: dict[int, PortalDonationSeen] = {}
        for part in chunks(sorted(set(ids))):
            for row in self.session.scalars(select(PortalDonationSeen).where(PortalDonationSeen.donation_id.in_(part))):
                found[row.donation_id] = row
        return found

    def waiting_donation_ids(self, since: datetime) -> set[int]:
        """Donation ids stated by unmatched events received since `since` (their waiting keys)."""
        rows = self.session.execute(
            select(WaitingKey.key_value)
            .where(WaitingKey.key_column == ID, WaitingKey.received_at >= since)
            .distinct()
            .limit(1_000)
        ).scalars()
        return {int(value) for value in rows if value.isdigit()}

    def recorded_donations(self) -> list[PortalDonationSeen]:
        return list(self.session.scalars(select(PortalDonationSeen)))

    def seen_patients(self, ids: Iterable[int]) -> dict[int, PortalPatientSeen]:
        found: dict[int, PortalPatientSeen] = {}
        for part in chunks(sorted(set(ids))):
            for row in self.session.scalars(select(PortalPatientSeen).where(PortalPatientSeen.patient_id.in_(part))):
                found[row.patient_id] = row
        return found

    def record_donations(self, new: list[dict], changed: list[tuple]) -> None:
        """portal_donations rows: `new` ones inserted in bulk (a first read may hold a whole portal), `changed`
        ones (record, facts, sha) updated in place. A new row's `written` is the baseline azamrecon's first
        write compares against (the status it first saw)."""
        if new:
            self.session.execute(insert(PortalDonationSeen), new)
        for record, facts, sha in changed:
            record.facts, record.facts_sha = json.dumps(facts), sha

    @staticmethod
    def new_record(donation_id: int, owner: str, facts: dict, sha: str, baseline: str | None) -> dict:
        written = json.dumps({"status": baseline}) if baseline is not None else None
        return {
            "donation_id": donation_id,
            "owner": owner,
            "facts": json.dumps(facts),
            "facts_sha": sha,
            "written": written,
            "reasserted": 0,
        }

    def record_patient(self, patient_id: int, facts: dict, sha: str, existing) -> None:
        if existing is None:
            self.session.add(PortalPatientSeen(patient_id=patient_id, facts=json.dumps(facts), facts_sha=sha))
        else:
            existing.facts, existing.facts_sha = json.dumps(facts), sha

    def mirror_patient(self, row: PortalPatient, now: datetime) -> None:
        """azamrecon's patients row for a portal patient, same id: the target the fold's totals use."""
        values = {"name": row.full_name[:200], "funding_required": row.funding_required}
        if self.session.get(Patient, row.id) is None:
            self.session.execute(insert(Patient).values(id=row.id, created_at=now, **values))
        else:
            self.session.execute(update(Patient).where(Patient.id == row.id).values(**values))

    def mirror_donations(self, rows: dict[int, dict]) -> None:
        """azamrecon's donations rows for these portal donations (id -> static facts, same id): the facts the
        fold reads. New ones inserted in bulk, existing ones updated."""
        existing: set[int] = set()
        for part in chunks(sorted(rows)):
            existing.update(self.session.scalars(select(Donation.id).where(Donation.id.in_(part))))
        new = [
            {"external_reference": None, "transaction_id": None, **values, "id": donation_id}
            for donation_id, values in rows.items()
            if donation_id not in existing
        ]
        if new:
            self.session.execute(insert(Donation), new)
        for donation_id in existing:
            self.session.execute(update(Donation).where(Donation.id == donation_id).values(**rows[donation_id]))

    def azampay_named(
        self, ids: Iterable[int], reference_prefix: str, callback_auth: tuple[str, ...] | None
    ) -> set[int]:
        """Which of these donations a checkout through azamrecon, or an AzamPay callback that counts (by its
        `{prefix}-{id}-` reference; `callback_auth`: the auth values that count, None for any, () for none)
        has named: the log's indexed utilityref and donation_id columns."""
        found: set[int] = set()
        callbacks = "utilityref >= :head AND utilityref < :stop AND source = 'callback'"
        if callback_auth is not None:
            marks = ", ".join(f":a{n}" for n in range(len(callback_auth)))
            callbacks = f"{callbacks} AND auth IN ({marks})" if callback_auth else "1 = 0"
        for donation_id in ids:
            head = f"{reference_prefix}-{donation_id}-"
            params = {"head": head, "stop": head[:-1] + ".", "id": donation_id}
            params.update((f"a{n}", value) for n, value in enumerate(callback_auth or ()))
            hit = self.session.execute(
                text(
                    f"SELECT 1 FROM payment_events WHERE ({callbacks}) "
                    "OR (donation_id = :id AND source = 'checkout') LIMIT 1"
                ),
                params,
            ).first()
            if hit is not None:
                found.add(donation_id)
        return found


class PortalLookup:
    """The receiver's second look, in portal mode: a donation the portal created a moment ago is not
    recorded yet (the next fold records it), but a callback for it is answered 200, found in the portal's
    own table with the facts the fold will read (pipeline.portal_facts.references_of)."""

    def __init__(self, config: PortalConfig, references: ReferenceFormat):
        self.config, self.references = config, references

    def __call__(self, session: Session, wanted: dict[str, set]) -> list[DonationFacts]:
        portal = PortalRows(session, self.config)
        rows = portal.donations_by_ids(wanted.get(ID, ()))
        values = {value for column, found in wanted.items() if column != ID for value in found}
        rows += portal.donations_by_transaction(values) if values else []
        facts = []
        stated = wanted.get(REFERENCE, ())
        for row in rows:
            external_reference, azampay_id = references_of(row, self.references)
            external_reference = external_reference or in_flight_reference(row, stated, self.references)
            facts.append(DonationFacts(row.id, external_reference, azampay_id, None, None))
        return facts


def portal_naive(value: datetime | None):
    """A datetime as the portal's DATETIME columns hold it (naive UTC: Django's USE_TZ)."""
    return _naive(value)

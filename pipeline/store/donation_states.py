"""SqlFoldStore's donations role: the states a batch resolves to, and their derived columns written back."""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.fold import DERIVED_FIELDS, DonationState
from pipeline.resolution import ID, REFERENCE, TRANSACTION
from pipeline.store.fold_rows import DERIVED_DATETIMES, DERIVED_GETTER, STATE_SELECT, Rows


class DonationRows(Rows):
    def donations_matching(self, wanted: dict[str, set]) -> dict[int, DonationState]:
        """Donations whose column holds one of the wanted values (pipeline.resolution.wanted_values). The keys
        are resolved to ids on the unique indexes alone, then each state row is read once."""
        raw = self.raw
        ids = set(wanted.get(ID, ()))
        for column in (REFERENCE, TRANSACTION):
            if wanted.get(column):
                ids.update(
                    row[0]
                    for row in raw.fetch_in(f"SELECT id FROM donations WHERE {column} IN ", sorted(wanted[column]))
                )
        states: dict[int, DonationState] = {}
        state = raw.state
        for row in raw.fetch_in(STATE_SELECT, sorted(ids)):
            states[row[0]] = state(row)
        return states

    def max_donation_id(self) -> int:
        return self.raw.fetch("SELECT MAX(id) FROM donations")[0][0] or 0

    def keys_of(self, ids: Iterable[int]) -> tuple[set[str], set[str]]:
        """(references, transaction ids), where set, of these donations."""
        references, transactions = set(), set()
        for reference, transaction in self.raw.fetch_in(
            "SELECT external_reference, transaction_id FROM donations WHERE id IN ", sorted(set(ids))
        ):
            if reference:
                references.add(reference)
            if transaction:
                transactions.add(transaction)
        return references, transactions

    def donation_keys_above(self, donation_id: int) -> tuple[int, set[str], set[int], set[str]]:
        """(highest id, references, ids, transaction ids) of donations created after `donation_id`."""
        references, ids, transactions = set(), set(), set()
        high = donation_id
        rows = self.raw.fetch(
            f"SELECT id, external_reference, transaction_id FROM donations WHERE id > {self.raw.mark}", (donation_id,)
        )
        for donation, reference, transaction in rows:
            high = max(high, donation)
            ids.add(donation)
            if reference:
                references.add(reference)
            if transaction:
                transactions.add(transaction)
        return high, references, ids, transactions

    def write_donations(self, states: Iterable[DonationState]) -> None:
        raw = self.raw
        when = raw.bind_when
        derived = DERIVED_GETTER
        rows = []
        for state in states:
            values = list(derived(state))
            for index in DERIVED_DATETIMES:
                if values[index] is not None:
                    values[index] = when(values[index])
            values.append(state.id)
            rows.append(values)
        raw.update_rows("donations", DERIVED_FIELDS, rows)

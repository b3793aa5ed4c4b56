"""Hostile input 5: a Hypothesis state machine on a real SQLite database with a webhook password.

It interleaves, at random: callbacks (trusted, forged with a wrong password, without credentials;
success/failure/cancel/unknown status; right or wrong amount), duplicates of earlier callbacks,
callbacks naming a donation that only appears later, polls, operator resolutions, donations created
late, incremental folds of random size at random points, and rebuilds. Checks after every fold and at
the end: credits unique; the sum of patient funding equals the sum of patient credits; the invariants;
incremental == rebuild (jobs.rebuild.check: no difference); and the terminal state does not depend
on order (each donation's events folded purely in reverse and shuffled order give the same status,
completed_at and credit)."""

from __future__ import annotations

import itertools
import random
import shutil
import tempfile
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule
from sqlalchemy import func, select

from jobs.fold import run_fold
from jobs.operator import resolve_donation
from jobs.rebuild import check, rebuild
from pipeline.auth import Authenticator
from pipeline.config import load_config
from pipeline.db import make_engine, transaction
from pipeline.events import EventFields, extract_fields
from pipeline.fold import DonationState, credit_of, fold_donation
from pipeline.fold_batch import trust_policy
from pipeline.models import Donation, FundingCredit, Patient
from pipeline.schema import upgrade
from pipeline.store.events import append_event, event_row
from pipeline.store.state import SqlFoldStore
from tests.reliability.helpers import T0, add_donation_row, add_patient_row, callback_json

PASSWORD = "stateful-webhook-pw"
STATS = {"examples": 0, "steps": 0, "folds": 0, "rebuilds": 0, "checks": 0, "callbacks": 0, "violations": 0}
_TEMPLATE: dict = {}


def template() -> Path:
    if "path" not in _TEMPLATE:
        path = Path(tempfile.mkdtemp(prefix="azamrecon-stateful-")) / "template.db"
        engine = make_engine(load_config(environ={}, overrides={"database.url": f"sqlite:///{path}"}).database)
        upgrade(engine)
        engine.dispose()
        _TEMPLATE["path"] = path
    return _TEMPLATE["path"]


class Ledger(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        STATS["examples"] += 1
        self.dir = Path(tempfile.mkdtemp(prefix="azamrecon-sm-"))
        path = self.dir / "db.sqlite"
        shutil.copy(template(), path)
        self.config = load_config(
            environ={},
            overrides={
                "database.url": f"sqlite:///{path}",
                "webhook.password": PASSWORD,
                "logging.dir": str(self.dir / "logs"),
            },
        )
        self.engine = make_engine(self.config.database)
        self.auth = Authenticator.from_config(self.config.webhook)
        self.patients = [add_patient_row(self.engine, f"P{i}", required="2500") for i in range(2)]
        self.donations: list[tuple[int, str]] = []
        self.named_early: list[str] = []
        self.bodies: list[bytes] = []
        self.counter = itertools.count(1)
        for _ in range(3):
            self._new_donation(None)

    def teardown(self):
        try:
            if hasattr(self, "engine"):
                run_fold(self.engine, self.config, T0 + timedelta(days=1))
                self._check_all()
                self._check_order_independence()
        finally:
            if hasattr(self, "engine"):
                self.engine.dispose()
                shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------------------
    def _new_donation(self, reference: str | None, patient_choice: int = 0) -> None:
        n = next(self.counter)
        reference = reference or f"RHCI-DN-S{n}-20260114093000"
        patient = (self.patients + [None])[patient_choice % 3]
        self.donations.append(
            (add_donation_row(self.engine, reference, patient, amount="1000", transaction_id=f"AZ-{n}"), reference)
        )

    def _append(self, body: bytes, offset: int) -> None:
        STATS["callbacks"] += 1
        fields = extract_fields(body)
        auth = self.auth.check(fields, body) if fields.parse_error is None else self.auth.unchecked_auth()
        with transaction(self.engine) as session:
            append_event(
                session,
                event_row(
                    source="callback",
                    body=body,
                    received_at=T0 + timedelta(seconds=offset),
                    auth=auth,
                    fields=fields,
                    content_type="application/json",
                ),
            )
        self.bodies.append(body)

    def _check_all(self) -> None:
        STATS["checks"] += 1
        with transaction(self.engine) as session:
            problems = SqlFoldStore(session).invariant_violations()
            credits = list(
                session.execute(select(FundingCredit.donation_id, FundingCredit.patient_id, FundingCredit.amount))
            )
            funding = session.scalar(select(func.coalesce(func.sum(Patient.funding_received), 0)))
        STATS["violations"] += len(problems)
        assert problems == []
        donation_ids = [c.donation_id for c in credits]
        assert len(donation_ids) == len(set(donation_ids)), "a donation credited twice"
        assert Decimal(funding) == sum((c.amount for c in credits if c.patient_id is not None), Decimal("0"))
        result = check(self.engine, self.config)
        assert result.differences == [], result.differences[:10]

    def _check_order_independence(self) -> None:
        policy = trust_policy(self.config)
        with transaction(self.engine) as session:
            store = SqlFoldStore(session)
            rows = list(session.scalars(select(Donation)))
            for row in rows:
                events = store.events_by_ids(store.applied_events([row.id]).get(row.id, []))

                def fresh(row=row):
                    return DonationState(
                        row.id,
                        row.patient_id,
                        row.charge_amount,
                        row.patient_amount,
                        row.external_reference,
                        row.transaction_id,
                    )

                for order in (
                    list(reversed(events)),
                    random.Random(row.id).sample(events, len(events)),
                    events + events,
                ):
                    state = fresh()
                    fold_donation(state, order, policy)
                    assert (state.status, state.completed_at) == (row.status, row.completed_at), (
                        row.id,
                        [e.id for e in order],
                    )
                    credit = credit_of(state)
                    live_credit = session.scalar(
                        select(FundingCredit.amount).where(FundingCredit.donation_id == row.id)
                    )
                    assert (credit.amount if credit else None) == live_credit

    # -- rules -------------------------------------------------------------------------------
    @rule(
        which=st.integers(0, 50),
        status=st.sampled_from(["success", "SUCCESS", "Completed", "failed", "FAILURE", "cancelled", "pending?", ""]),
        amount=st.sampled_from(["1000", "1000.00", "1001", "999.99", None]),
        credential=st.sampled_from(["good", "bad", "absent"]),
        offset=st.integers(0, 3600),
    )
    def callback(self, which, status, amount, credential, offset):
        STATS["steps"] += 1
        donation_id, reference = self.donations[which % len(self.donations)]
        n = next(self.counter)
        password = {"good": PASSWORD, "bad": PASSWORD + "x", "absent": None}[credential]
        body = callback_json(
            reference, f"s{n}", status=status, amount=amount, transaction_id=f"AZ-X{n}", password=password
        )
        self._append(body, offset)

    @precondition(lambda self: self.bodies)
    @rule(which=st.integers(0, 1000), offset=st.integers(0, 3600))
    def duplicate(self, which, offset):
        STATS["steps"] += 1
        self._append(self.bodies[which % len(self.bodies)], offset)

    @rule(which=st.integers(0, 50), offset=st.integers(0, 3600), credential=st.sampled_from(["good", "bad"]))
    def replay_on_other_donation(self, which, offset, credential):
        """A callback of one donation replayed against another with a changed amount."""
        STATS["steps"] += 1
        _, reference = self.donations[which % len(self.donations)]
        body = callback_json(
            reference, f"r{next(self.counter)}", amount="10", password=PASSWORD if credential == "good" else "guess"
        )
        self._append(body, offset)

    @rule(offset=st.integers(0, 3600), good=st.booleans())
    def unknown_reference(self, offset, good):
        STATS["steps"] += 1
        reference = f"RHCI-DN-LATER{next(self.counter)}-20260114093000"
        self.named_early.append(reference)
        self._append(callback_json(reference, f"u{reference}", password=PASSWORD if good else None), offset)

    @precondition(lambda self: len(self.donations) < 9)
    @rule(early=st.booleans(), patient_choice=st.integers(0, 2))
    def add_donation(self, early, patient_choice):
        STATS["steps"] += 1
        reference = self.named_early.pop(0) if early and self.named_early else None
        self._new_donation(reference, patient_choice)

    @rule(
        which=st.integers(0, 50),
        status=st.sampled_from(["SUCCESS", "FAILED", "PENDING", "EXPIRED", "UNKNOWN"]),
        offset=st.integers(0, 3600),
    )
    def poll(self, which, status, offset):
        STATS["steps"] += 1
        donation_id, _ = self.donations[which % len(self.donations)]
        with transaction(self.engine) as session:
            append_event(
                session,
                event_row(
                    source="poll",
                    body=b'{"data":"Transaction x."}',
                    received_at=T0 + timedelta(seconds=offset),
                    auth="n/a",
                    fields=EventFields(status=status, status_raw=status),
                    donation_id=donation_id,
                ),
            )

    @rule(
        which=st.integers(0, 50),
        status=st.sampled_from(["COMPLETED", "FAILED", "CANCELLED"]),
        offset=st.integers(0, 3600),
    )
    def operator(self, which, status, offset):
        STATS["steps"] += 1
        donation_id, _ = self.donations[which % len(self.donations)]
        resolve_donation(
            self.engine, donation_id, status, "decided by the state machine", T0 + timedelta(seconds=offset), actor="sm"
        )

    @rule(batches=st.integers(1, 3), size=st.integers(1, 8))
    def fold(self, batches, size):
        STATS["steps"] += 1
        STATS["folds"] += 1
        run_fold(
            self.engine, self.config, T0 + timedelta(hours=2), max_batches=batches, batch_size=size, announce=False
        )
        self._check_all()

    @rule()
    def do_rebuild(self):
        STATS["steps"] += 1
        STATS["rebuilds"] += 1
        rebuild(self.engine, self.config, T0 + timedelta(hours=2))
        self._check_all()


def test_state_machine(request, figures):
    long_run = request.config.getoption("--long", default=False)
    for key in STATS:
        STATS[key] = 0
    Ledger.TestCase.settings = settings(
        max_examples=400 if long_run else 60,
        stateful_step_count=40 if long_run else 30,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    try:
        Ledger.TestCase().runTest()
    finally:
        figures.record(
            "5. stateful Hypothesis (RuleBasedStateMachine)",
            "random interleavings of trusted/forged/credential-less/duplicate/replayed/unknown-reference/conflicting callbacks, polls, operator decisions, late donations, folds at random points, rebuilds",
            STATS["examples"],
            {
                "steps": STATS["steps"],
                "callbacks": STATS["callbacks"],
                "folds": STATS["folds"],
                "rebuilds": STATS["rebuilds"],
                "rebuild checks with differences": 0 if STATS["checks"] else "n/a",
                "checks": STATS["checks"],
                "invariant violations": STATS["violations"],
            },
        )

"""The test-only portal (tests/portal_django): its migrations make the portal's two tables as the portal's do,
on SQLite and MariaDB, and each helper writes what the portal's code path writes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import inspect, text
from sqlalchemy import types as sqltypes

from pipeline.config import Config
from pipeline.db import make_engine
from tests.portal_fixtures import KEPT_TABLES, show_create

# donor_donation: column -> nullable, for the columns azamrecon reads or writes and two it never touches
DONATION_NULLABLE = {
    "id": False,
    "patient_id": True,
    "amount": False,
    "patient_amount": False,
    "rhci_support_amount": True,
    "currency": False,
    "status": False,
    "payment_method": False,
    "transaction_id": True,
    "payment_gateway": False,
    "gateway_reference": True,
    "failure_reason": False,
    "completed_at": True,
    "created_at": False,
    "updated_at": False,
    "message": False,
    "is_anonymous": False,
}
PATIENT_NULLABLE = {
    "id": False,
    "full_name": False,
    "funding_required": False,
    "funding_received": False,
    "funding_currency": False,
    "status": False,
    "created_at": False,
    "updated_at": False,
}
VARCHAR_LENGTHS = {
    "donor_donation": {
        "currency": 3,
        "status": 20,
        "payment_method": 255,
        "transaction_id": 200,
        "payment_gateway": 50,
        "gateway_reference": 200,
    },
    "auth_app_patientprofile": {"full_name": 200, "funding_currency": 3, "status": 20},
}
MONEY = {
    "donor_donation": ("amount", "patient_amount", "rhci_support_amount"),
    "auth_app_patientprofile": ("funding_required", "funding_received"),
}


@pytest.fixture
def engine(portal_db):
    made = make_engine(Config().database.model_copy(update={"url": portal_db.url}))
    yield made
    made.dispose()


def _unique_columns(inspector, table) -> set[tuple[str, ...]]:
    found = {tuple(c["column_names"]) for c in inspector.get_unique_constraints(table)}
    # SQLite's inline UNIQUE is an automatic index, which reflection lists only when asked
    extra = {"include_auto_indexes": True} if inspector.dialect.name == "sqlite" else {}
    found |= {tuple(i["column_names"]) for i in inspector.get_indexes(table, **extra) if i["unique"]}
    return found


def _close(a: datetime, b: datetime, seconds: float = 5) -> bool:
    return abs(a - b) < timedelta(seconds=seconds)


def test_migrations_match_the_models(portal_db):
    from django.apps import apps
    from django.db.migrations.autodetector import MigrationAutodetector
    from django.db.migrations.loader import MigrationLoader
    from django.db.migrations.state import ProjectState

    loader = MigrationLoader(None, ignore_no_migrations=True)
    changes = MigrationAutodetector(loader.project_state(), ProjectState.from_apps(apps)).changes(graph=loader.graph)
    assert changes == {}, "models changed without a migration: see tests/portal_django/__init__.py"
    assert set(loader.disk_migrations) == {("auth_app", "0001_initial"), ("donor", "0001_initial")}


def test_migrate_makes_the_portal_tables(portal_db, engine):
    inspector = inspect(engine)
    assert set(inspector.get_table_names()) == set(KEPT_TABLES)
    for table, nullable in (("donor_donation", DONATION_NULLABLE), ("auth_app_patientprofile", PATIENT_NULLABLE)):
        columns = {c["name"]: c for c in inspector.get_columns(table)}
        assert {name: columns[name]["nullable"] for name in nullable} == nullable
        # Django puts no default in the database: every NOT NULL column must be given by whoever inserts
        assert {name: c["default"] for name, c in columns.items() if c["default"] is not None} == {}
        assert {name: columns[name]["type"].length for name in VARCHAR_LENGTHS[table]} == VARCHAR_LENGTHS[table]
        for name in MONEY[table]:
            assert isinstance(columns[name]["type"], sqltypes.Numeric), name
            if portal_db.kind == "mysql":
                assert (columns[name]["type"].precision, columns[name]["type"].scale) == (10, 2), name
        for name in ("created_at", "updated_at"):
            assert isinstance(columns[name]["type"], sqltypes.DateTime)
            if portal_db.kind == "mysql":
                assert columns[name]["type"].fsp == 6  # DATETIME(6): microseconds kept
    assert ("transaction_id",) in _unique_columns(inspector, "donor_donation")
    references = {
        (tuple(fk["constrained_columns"]), fk["referred_table"], tuple(fk["referred_columns"]))
        for fk in inspector.get_foreign_keys("donor_donation")
    }
    assert (("patient_id",), "auth_app_patientprofile", ("id",)) in references
    # the portal's index names come out the same: they hash the table name, which the app labels reproduce
    index_names = {index["name"] for index in inspector.get_indexes("donor_donation")}
    assert {"donor_donat_created_0578ba_idx", "donor_donat_status_7b314d_idx"} <= index_names


def test_created_rows_as_the_portal_creates_them(portal_db, engine):
    patient = portal_db.create_patient("Asha Mwakyusa", "150000.00")
    general = portal_db.create_donation(amount="10000")
    split = portal_db.create_donation(patient, amount="25000", patient_amount="20000")
    assert general.id == 1, "a fresh database per test: ids start again"
    stored = portal_db.read_patient(patient.id)
    assert re.fullmatch(r"ASHA-\d{4}-\d{3}", stored.bill_identifier)
    assert (stored.status, stored.funding_currency, stored.funding_required) == ("PUBLISHED", "TZS", Decimal("150000"))
    first = portal_db.read_donation(general.id)
    assert (first.patient_id, first.patient_amount, first.rhci_support_amount) == (None, Decimal("10000"), None)
    assert (first.status, first.transaction_id, first.payment_method, first.failure_reason) == ("PENDING", None, "", "")
    assert first.completed_at is None and _close(first.created_at, first.updated_at, 1)
    second = portal_db.read_donation(split.id)
    assert (second.patient_id, second.rhci_support_amount) == (patient.id, Decimal("5000"))
    with engine.connect() as connection:  # the URL reaches the same database
        rows = connection.execute(text("SELECT id, status, currency FROM donor_donation ORDER BY id")).all()
    assert [tuple(row) for row in rows] == [(general.id, "PENDING", "TZS"), (split.id, "PENDING", "TZS")]


def test_external_id_is_stamped_at_checkout_in_utc(portal_db):
    donation = portal_db.create_donation(amount="5000")
    at = datetime(2026, 1, 14, 9, 30, 5, tzinfo=UTC)
    assert portal_db.external_id(donation, at) == f"RHCI-DN-{donation.id}-20260114093005"
    external_id = portal_db.checkout_saved(donation)
    stamp = datetime.strptime(external_id.rsplit("-", 1)[1], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    assert _close(stamp, datetime.now(UTC)) and int(external_id.split("-")[2]) == donation.id  # the callback's parse


def test_checkout_saved_writes_the_azampay_fields(portal_db):
    mobile = portal_db.create_donation(amount="5000")
    external_id = portal_db.checkout_saved(mobile, provider="airtel")
    stored = portal_db.read_donation(mobile.id)
    assert (stored.transaction_id, stored.payment_method, stored.payment_gateway, stored.status) == (
        external_id,
        "Mobile Money - Airtel",
        "Azam Pay",
        "PENDING",
    )
    bank = portal_db.create_donation(amount="7000")
    portal_db.checkout_saved(bank, provider="CRDB", bank=True, azampay_transaction_id="AZ-TXN-1")
    stored = portal_db.read_donation(bank.id)
    assert (stored.transaction_id, stored.payment_method) == ("AZ-TXN-1", "Bank Transfer - Crdb")


def test_checkout_late_save_reverts_a_completion_written_meanwhile(portal_db):
    donation = portal_db.create_donation(amount="5000")
    assert portal_db.admin_bulk([donation.id], "COMPLETED") == 1  # behind the checkout's back
    assert portal_db.read_donation(donation.id).status == "COMPLETED"
    before = portal_db.read_donation(donation.id).updated_at
    portal_db.checkout_saved(donation)  # the in-memory row still says PENDING
    stored = portal_db.read_donation(donation.id)
    assert (stored.status, stored.completed_at) == ("PENDING", None)
    assert stored.updated_at > before


def test_sandbox_autocomplete_completes_within_seconds_without_callback(portal_db):
    target_zero = portal_db.create_patient("Neema Joseph", "0")
    target_set = portal_db.create_patient("Baraka Ally", "50000")
    first = portal_db.create_donation(target_zero, amount="5000")
    second = portal_db.create_donation(target_set, amount="50000")
    external_id = portal_db.sandbox_autocomplete(first)
    portal_db.sandbox_autocomplete(second)
    stored = portal_db.read_donation(first.id)
    assert (stored.status, stored.transaction_id) == ("COMPLETED", external_id)
    assert timedelta(0) <= stored.completed_at - stored.created_at < timedelta(seconds=5)
    assert portal_db.read_patient(target_zero.id).status == "FULLY_FUNDED"
    # the portal compares the stored funding_received, which nothing updates: a covered target stays PUBLISHED
    assert portal_db.read_patient(target_set.id).status == "PUBLISHED"


def test_manual_update_sets_any_of_its_statuses_from_any_status(portal_db):
    donation = portal_db.create_donation(amount="5000")
    completed_at = portal_db.manual_update(donation.id, "completed").completed_at
    assert portal_db.read_donation(donation.id).status == "COMPLETED"
    assert portal_db.manual_update(donation.id, "COMPLETED").completed_at > completed_at  # stamped again
    portal_db.manual_update(donation.id, "FAILED")  # a completed donation downgraded
    stored = portal_db.read_donation(donation.id)
    assert stored.status == "FAILED" and stored.completed_at is not None
    with pytest.raises(ValueError):
        portal_db.manual_update(donation.id, "REFUNDED")


def test_status_view_completes_a_pending_donation_and_reverts_a_write_during_its_call(portal_db):
    from tests.portal_django.donor.models import Donation

    donation = portal_db.create_donation(amount="5000")
    assert portal_db.status_view_complete(donation.id) is False  # no transaction_id yet: nothing written
    assert portal_db.read_donation(donation.id).status == "PENDING"
    external_id = portal_db.checkout_saved(donation)

    def callback_meanwhile():
        Donation.objects.using(portal_db.alias).filter(id=donation.id).update(transaction_id="AZ-CALLBACK-9")

    assert portal_db.status_view_complete(donation.id, during_azampay_call=callback_meanwhile) is True
    stored = portal_db.read_donation(donation.id)
    assert (stored.status, stored.transaction_id) == ("COMPLETED", external_id)
    assert stored.completed_at is not None
    assert portal_db.status_view_complete(donation.id) is False  # no longer PENDING


def test_stablecoin_webhook_completes_any_donation(portal_db):
    patient = portal_db.create_patient("Zawadi Said", "0")
    donation = portal_db.create_donation(patient, amount="5000")
    portal_db.checkout_saved(donation)
    assert portal_db.stablecoin_complete(donation.id, payment_id="pepea-77", transaction_hash="5xHash") is True
    stored = portal_db.read_donation(donation.id)
    assert (stored.status, stored.transaction_id, stored.gateway_reference) == ("COMPLETED", "5xHash", "pepea-77")
    assert (stored.payment_gateway, stored.payment_method) == ("STABLECOIN_SOLANA", "USDC on Solana")
    assert portal_db.read_patient(patient.id).status == "FULLY_FUNDED"
    assert portal_db.stablecoin_complete(donation.id) is False  # already COMPLETED: ignored


def test_admin_bulk_leaves_updated_at_where_it_was(portal_db):
    first = portal_db.create_donation(amount="5000")
    second = portal_db.create_donation(amount="6000")
    before = {d.id: portal_db.read_donation(d.id).updated_at for d in (first, second)}
    assert portal_db.admin_bulk([first.id, second.id], "COMPLETED") == 2
    completed = portal_db.read_donation(first.id)
    assert completed.status == "COMPLETED" and completed.completed_at is not None
    assert portal_db.admin_bulk([second.id], "FAILED") == 1
    failed = portal_db.read_donation(second.id)
    assert failed.status == "FAILED" and failed.completed_at == completed.completed_at  # FAILED leaves it
    assert {d.id: portal_db.read_donation(d.id).updated_at for d in (first, second)} == before
    with pytest.raises(ValueError):
        portal_db.admin_bulk([first.id], "REFUNDED")


def test_refund_saves_the_row(portal_db):
    donation = portal_db.create_donation(amount="5000")
    portal_db.manual_update(donation.id, "COMPLETED")
    before = portal_db.read_donation(donation.id)
    portal_db.refund(donation.id)
    stored = portal_db.read_donation(donation.id)
    assert (stored.status, stored.completed_at) == ("REFUNDED", before.completed_at)
    assert stored.updated_at > before.updated_at


def test_bill_pay_donation_is_born_completed(portal_db):
    patient = portal_db.create_patient("Rehema Kileo", "80000", funding_currency="TZS")
    donation = portal_db.bill_pay_donation(patient, "30000", patient_amount="30000", pg_reference_id="PG-0001")
    stored = portal_db.read_donation(donation.id)
    assert (stored.status, stored.payment_gateway, stored.transaction_id) == ("COMPLETED", "AZAMPAY_BILLPAY", "PG-0001")
    assert (stored.currency, stored.patient_id, stored.patient_amount) == ("TZS", patient.id, Decimal("30000"))
    assert _close(stored.completed_at, stored.created_at, 1)


def test_portal_tables_survive_a_table_created_beside_them(portal_db, engine):
    portal_db.create_donation(amount="5000")
    before = show_create(portal_db)
    assert set(before) == {"donor_donation", "auth_app_patientprofile"}
    assert "transaction_id" in before["donor_donation"]
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE azamrecon_probe (id INTEGER PRIMARY KEY, donation_id BIGINT)"))
        connection.execute(text("INSERT INTO azamrecon_probe (id, donation_id) VALUES (1, 1)"))
    portal_db.create_donation(amount="6000")
    assert show_create(portal_db) == before
    engine.dispose()
    portal_db.reset()
    assert set(inspect(engine).get_table_names()) == set(KEPT_TABLES)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM donor_donation")).scalar() == 0


def test_reset_restores_altered_portal_tables(portal_db, engine):
    before = show_create(portal_db)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE donor_donation ADD COLUMN azamrecon_mark INTEGER NULL"))
    assert show_create(portal_db) != before
    engine.dispose()
    portal_db.reset()
    assert show_create(portal_db) == before
    assert portal_db.create_donation(amount="5000").id == 1

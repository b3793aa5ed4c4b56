"""`make demo-portal`: the test Django portal beside azamrecon on one SQLite file, its rows printed as they change.
Run: `make demo-portal`, or `.venv/bin/python -m tests.portal_django.demo [--dir DIR]` (DIR must not exist;
default: a new temporary directory, kept afterwards). Loopback only; about 10 s; exits 0 if every row ends right.

Django migrates the portal's two tables (donor_donation, auth_app_patientprofile); the real `azamrecon init`
adds azamrecon's own beside them (database.table_prefix azamrecon_, portal.enabled); the real `azamrecon serve`
receives the local AzamPay sandbox's callbacks. This process plays the portal (tests/portal_django/portal.py:
its own ORM statements for patients, checkouts, Bill Pay, the admin's refund) and runs the fold as the
scheduler would. After each step it prints the portal's rows that changed: `+` new, `*` changed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import yaml

from jobs.demo import _process, child_environment, loopback_without_proxy

WEBHOOK_PASSWORD = "demo-portal-webhook-password"
DONATION_COLUMNS = (
    "id",
    "status",
    "amount",
    "patient_amount",
    "currency",
    "transaction_id",
    "gateway_reference",
    "completed_at",
)
PATIENT_COLUMNS = ("id", "full_name", "funding_required", "funding_received", "funding_currency", "status")
# each checkout's payer number picks its sandbox outcome; `delayed` lets the checkout's rows print first
OUTCOMES = {"0758000002": "delayed", "0758000003": "success", "0758000005": "failure"}
# how the portal's rows must end: donation id -> status; patient id -> (funding_received, status)
EXPECTED_DONATIONS = {1: "COMPLETED", 2: "COMPLETED", 3: "REFUNDED", 4: "COMPLETED", 5: "FAILED"}
EXPECTED_PATIENTS = {1: ("60000.00", "FULLY_FUNDED"), 2: ("30000.00", "FULLY_FUNDED")}


def write_config(folder: Path, database: Path, receiver_port: int, sandbox) -> Path:
    """azamrecon's config beside the portal: its tables prefixed, the portal's rows the ones it reconciles."""
    config = {
        "database": {"url": f"sqlite:///{database}", "table_prefix": "azamrecon_"},
        "portal": {
            "enabled": True,
            # production compares every row every 30 s; the demo's refund must show at the next fold
            "scan_interval_seconds": 0.001,
        },
        "azampay": {
            "auth_url": sandbox.url,
            "checkout_url": sandbox.url,
            "client_id": sandbox.settings.client_id,
            "client_secret": sandbox.settings.client_secret,
            "api_key": sandbox.settings.api_key,
            "timeout_connect": 2,
            "timeout_read": 5,
        },
        "webhook": {"password": WEBHOOK_PASSWORD},
        "receiver": {"host": "127.0.0.1", "port": receiver_port, "spool_dir": str(folder / "spool")},
        "logging": {"dir": str(folder / "logs")},
        "privacy": {"key_file": str(folder / "azamrecon.key")},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _text(value) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


def snapshot(alias: str) -> dict[str, dict[int, tuple[str, ...]]]:
    """The portal's rows as its own ORM reads them now: table -> {id: the printed columns' texts}."""
    from tests.portal_django.auth_app.models import PatientProfile
    from tests.portal_django.donor.models import Donation

    tables = {}
    for table, model, columns in (
        ("donor_donation", Donation, DONATION_COLUMNS),
        ("auth_app_patientprofile", PatientProfile, PATIENT_COLUMNS),
    ):
        rows = model.objects.using(alias).order_by("id").values_list(*columns)
        tables[table] = {row[0]: tuple(_text(value) for value in row) for row in rows}
    return tables


def table_lines(columns: tuple[str, ...], rows: dict[int, tuple[str, ...]], marks: dict[int, str]) -> list[str]:
    """Plain aligned text: a header, then one line per row, its mark (+ new, * changed) in front."""
    widths = [max([len(name)] + [len(row[n]) for row in rows.values()]) for n, name in enumerate(columns)]
    lines = ["    " + "  ".join(name.ljust(width) for name, width in zip(columns, widths, strict=True)).rstrip()]
    for row_id, row in rows.items():
        cells = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        lines.append(f"  {marks.get(row_id, ' ')} {cells}")
    return lines


class Narrator:
    """Prints one caption per step, then each portal table in which a row appeared or changed."""

    COLUMNS = {"donor_donation": DONATION_COLUMNS, "auth_app_patientprofile": PATIENT_COLUMNS}

    def __init__(self, alias: str, say: Callable[[str], None]):
        self.alias, self.say = alias, say
        self.number = 0
        self.rows = {table: {} for table in self.COLUMNS}

    def step(self, caption: str) -> None:
        self.number += 1
        self.say("")
        self.say(f"step {self.number:>2}  {caption}")
        now = snapshot(self.alias)
        changed = False
        for table, rows in now.items():
            before = self.rows[table]
            marks = {i: "+" if i not in before else "*" for i, row in rows.items() if before.get(i) != row}
            if marks:
                changed = True
                self.say(f"  {table}")
                for line in table_lines(self.COLUMNS[table], rows, marks):
                    self.say(line)
        if not any(now.values()):
            self.say("  (the portal's tables are empty)")
        elif not changed:
            self.say("  (the portal's rows are unchanged)")
        self.rows = now

    def final(self) -> dict[str, dict[int, tuple[str, ...]]]:
        self.say("")
        self.say("final: the portal's rows")
        for table, rows in self.rows.items():
            self.say(f"  {table}")
            for line in table_lines(self.COLUMNS[table], rows, {}):
                self.say(line)
        return self.rows


def mismatches(rows: dict[str, dict[int, tuple[str, ...]]]) -> list[str]:
    """How the final rows differ from EXPECTED_*; empty when they all ended as expected."""
    status, received, patient_status = 1, 3, 5  # column positions in DONATION_COLUMNS / PATIENT_COLUMNS
    found = {i: row[status] for i, row in rows["donor_donation"].items()}
    wrong = [f"donation {i}: {found.get(i)} (expected {s})" for i, s in EXPECTED_DONATIONS.items() if found.get(i) != s]
    patients = {i: (row[received], row[patient_status]) for i, row in rows["auth_app_patientprofile"].items()}
    wrong += [
        f"patient {i}: {patients.get(i)} (expected {v})" for i, v in EXPECTED_PATIENTS.items() if patients.get(i) != v
    ]
    return wrong


def migrate_portal(database: Path):
    """Django (tests/portal_django) with the demo's SQLite file as its default database, migrated."""
    from django.core.management import call_command

    from tests.portal_django import setup

    setup({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(database)}})
    from tests.portal_django.portal import PortalDB  # its models need the apps set up first

    call_command("migrate", database="default", verbosity=0, interactive=False)
    return PortalDB(alias="default", url=f"sqlite:///{database}", kind="sqlite", path=database)


def azamrecon_init(config_path: Path, folder: Path, say: Callable[[str], None]) -> None:
    """The real `azamrecon init`, as an operator runs it once beside the portal's tables."""
    done = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "init", "--config", str(config_path)],
        cwd=folder,
        env=child_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"azamrecon init failed ({done.returncode}): {done.stdout}{done.stderr}")
    say(f"azamrecon init: {done.stdout.strip().splitlines()[0]}")


def callbacks_arrived(sandbox, first: int, count: int) -> str:
    """Wait (bounded) until the sandbox delivered `count` callbacks; the receiver's answers from the `first`th."""
    sent = sandbox.wait_for_callbacks(count, timeout=10)
    if len(sent) < count:
        raise RuntimeError(f"only {len(sent)} of {count} callbacks were delivered")
    return ", ".join(str(item["http_status"] or item["error"]) for item in sent[first - 1 : count])


def run_demo(folder: Path, say: Callable[[str], None] = print) -> int:
    from django.utils import timezone

    from jobs.fold import run_fold
    from pipeline.azampay import AzamPayClient
    from pipeline.config import load_config
    from pipeline.db import make_engine
    from pipeline.logs import configure_logging, secrets_of
    from sandbox.testing import free_port, running_sandbox, wait_healthy

    folder.mkdir(parents=True, exist_ok=False)
    database = folder / "portal.sqlite3"
    port = free_port()
    callback_url = f"http://127.0.0.1:{port}/api/v1.0/donors/payment/azampay/callback/"
    started = time.monotonic()
    with running_sandbox(
        callback_url=callback_url, webhook_password=WEBHOOK_PASSWORD, outcomes=OUTCOMES, delay_seconds=0.5
    ) as sandbox:
        portal = migrate_portal(database)
        narrator = Narrator(portal.alias, say)
        say(f"portal database {database} (Django migrated donor_donation and auth_app_patientprofile)")
        say(f"sandbox AzamPay at {sandbox.url}")
        config_path = write_config(folder, database, port, sandbox)
        azamrecon_init(config_path, folder, say)
        config = load_config(config_path, environ={})
        configure_logging(config.logging, component="demo", secrets=secrets_of(config))
        engine = make_engine(config.database)

        def fold() -> None:
            run_fold(engine, config, datetime.now(UTC))

        with contextlib.ExitStack() as stack:
            server = stack.enter_context(_process("serve", ["serve", "--config", str(config_path)], folder, say))
            problem = wait_healthy(f"http://127.0.0.1:{port}", server, 20)
            if problem is not None:
                raise RuntimeError(f"the receiver {problem}; see {folder / 'serve.out'}")
            client = stack.enter_context(AzamPayClient(config.azampay))

            def checkout(donation, msisdn: str) -> str:
                """The portal's checkout view: the externalId saved on the row, AzamPay asked to charge it. Saved
                first so the row holds the very externalId sent (the view saves after AzamPay answers)."""
                external_id = portal.checkout_saved(donation, provider="Mpesa")
                client.mno_checkout(msisdn, Decimal(int(donation.amount)), external_id, "Mpesa")
                return external_id

            narrator.step("azamrecon's tables are beside the portal's; the portal has no rows yet")
            amina = portal.create_patient("Amina", 60000)
            baraka = portal.create_patient("Baraka", 100000)
            narrator.step("the portal registers two patients; staff publish them with their funding targets (TZS)")
            portal.bill_pay_donation(baraka, 30000, patient_amount=30000)
            narrator.step("a Bill Pay payment for Baraka: the portal creates donation 1 COMPLETED at once")
            fold()
            narrator.step("the fold reads the portal's rows: Bill Pay is the portal's, never written, but counted")
            donation_2 = portal.create_donation(amina, amount=60000)
            external_id = checkout(donation_2, "0758000002")
            narrator.step(f"a donor checks out donation 2 for Amina: the portal saves externalId {external_id}")
            answer = callbacks_arrived(sandbox, 1, 1)
            narrator.step(f"a callback for donation 2 arrives at `azamrecon serve` (HTTP {answer}): logged only")
            fold()
            narrator.step("the fold writes COMPLETED into donation 2, AzamPay's reference, and Amina's funding")
            donation_3 = portal.create_donation(baraka, amount=70000)
            checkout(donation_3, "0758000003")
            narrator.step("a donor checks out donation 3 (70,000 TZS for Baraka)")
            portal.create_donation(
                amina,
                amount=5000,
                currency="KES",
                status="COMPLETED",
                payment_gateway="YELLOWCARD",
                payment_method="Card",
                completed_at=timezone.now(),
            )
            narrator.step("a KES card payment for Amina, a TZS patient: the portal completes donation 4 itself")
            donation_5 = portal.create_donation(baraka, amount=20000)
            checkout(donation_5, "0758000005")
            narrator.step("a donor checks out donation 5 (20,000 TZS for Baraka); the wallet will refuse it")
            answer = callbacks_arrived(sandbox, 2, 3)
            narrator.step(f"AzamPay's callbacks for donations 3 (success) and 5 (failure) are in (HTTP {answer})")
            fold()
            narrator.step("the fold: 3 COMPLETED, 5 FAILED, Baraka funded; the KES donation is listed, not counted")
            portal.refund(donation_3.id)
            narrator.step("staff refund donation 3 in the Django admin")
            fold()
            narrator.step("the fold takes the refund out of Baraka's funding and lists it; his status is left to staff")
        rows = narrator.final()
        anomalies = _anomalies(engine)
        engine.dispose()
    say("")
    say("azamrecon's anomalies: " + (", ".join(f"{kind} (donation {i})" for kind, i in anomalies) or "none"))
    say(f"files kept in {folder} (logs/payments.log, serve.out, portal.sqlite3)")
    wrong = mismatches(rows)
    if wrong:
        say("demo-portal: FAILED: " + "; ".join(wrong))
        return 1
    say(f"demo-portal: every portal row ended as expected ({time.monotonic() - started:.1f} s)")
    return 0


def _anomalies(engine) -> list[tuple[str, int | None]]:
    from sqlalchemy import text

    with engine.connect() as connection:  # `anomalies` is azamrecon_anomalies here: the engine adds the prefix
        return [tuple(row) for row in connection.execute(text("SELECT kind, donation_id FROM anomalies ORDER BY id"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.portal_django.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="a folder that does not exist yet (default: a temp one)")
    args = parser.parse_args(argv)
    if args.dir is not None and args.dir.exists():
        parser.error(f"--dir {args.dir} already exists; the demo needs a fresh folder")
    folder = args.dir or Path(tempfile.mkdtemp(prefix="azamrecon-demo-portal-")) / "run"
    # the sandbox's callbacks and the AzamPay client stay on loopback whatever proxy the shell has set
    os.environ.update(loopback_without_proxy())
    return run_demo(folder.resolve())


if __name__ == "__main__":
    sys.exit(main())

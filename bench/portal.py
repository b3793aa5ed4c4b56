"""Portal mode's cost beside standalone: `python -m bench.portal [--quick] [--db sqlite|mysql|both]`.

Both modes on one backend in one run (the VM's speed moves: compare within a run):
- rebuild: one generated log (callbacks, failures, AzamPay's retries, unknown references; N donations of N/40
  patients) folded by jobs.rebuild.rebuild in this process. Standalone: donations and patients in azamrecon's
  tables. Portal mode: the same rows bulk-inserted into donor_donation and auth_app_patientprofile, made by the
  test Django project's migrations (tests/portal_django), azamrecon's tables prefixed beside them. Its rows are
  read first (sync_portal: a `portal` fact each in the log, and the mirror rows); the rebuild folds those facts
  with the callbacks and writes every result into the portal; a second rebuild, in each mode, resets and refolds.
- callback -> COMPLETED: `azamrecon serve` and `azamrecon scheduler` (defaults) over loopback HTTP, as
  bench.latency: one success callback per donation at a steady rate, each donation created just before it (in
  portal mode as the portal's checkout leaves it: gateway "Azam Pay", transaction_id its externalId). Latency:
  POST's start -> the first 10 ms poll of a reader that sees the row COMPLETED (donations.status standalone,
  donor_donation.status in portal mode). Target: p99 <= 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path

import httpx
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from bench import common
from bench.common import ratio, table
from bench.latency import POLL_EVERY, TARGET_P99_S, _pct
from jobs.portal_sync import sync_portal
from jobs.rebuild import rebuild
from pipeline.config import Config, load_config
from pipeline.db import make_engine, transaction
from pipeline.events import extract_fields
from pipeline.logs import configure_logging, secrets_of
from pipeline.models import Donation, Patient
from pipeline.schema import upgrade
from pipeline.sections import DatabaseConfig
from pipeline.store.events import append_events, event_row

DEFAULT_MYSQL = "mysql+pymysql://root@127.0.0.1:3306/azamrecon_benchportal"  # + _standalone / _portal
PREFIX = "azamrecon_"  # database.table_prefix beside the portal's tables, as docs/portal.md sets it
MODES = ("standalone", "portal")
JSON = {"content-type": "application/json"}
# each mode's timed steps: "read" and "compare" run sync_portal over every portal row (first sight, then nothing
# changed), "rebuild" and "again" jobs.rebuild.rebuild (a log never folded, then the same log refolded)
STEPS = {"standalone": ("rebuild", "again"), "portal": ("read", "rebuild", "again", "compare")}
# the NOT NULL columns Django leaves to Python defaults, as the portal's checkout view fills them
DONOR = {"is_anonymous": True, "anonymous_name": "Bench Donor", "anonymous_email": "donor@example.org"}
DONOR |= {"currency": "TZS", "donation_type": "ONE_TIME", "status": "PENDING", "payment_gateway": "Azam Pay"}
DONOR |= {"payment_method": "Mobile Money - Halopesa", "failure_reason": "", "message": "", "dedication": ""}
DONOR |= {"recurring_frequency": 1, "is_recurring_active": False, "ip_address": "127.0.0.1", "user_agent": ""}
PATIENT = {"gender": "F", "short_description": "bench", "long_story": "", "medical_partner": "", "diagnosis": ""}
PATIENT |= {"treatment_needed": "", "funding_received": "0.00", "funding_currency": "TZS", "status": "PUBLISHED"}
PATIENT |= {"total_treatment_cost": "0.00", "cost_breakdown_notes": "", "is_featured": False, "rejection_reason": ""}


# --- databases: standalone (azamrecon's tables alone) or portal (Django's two tables, azamrecon's prefixed) -------


def _mysql_url(mode: str) -> str:
    return os.environ.get("AZAMRECON_BENCH_PORTAL_MYSQL_URL", DEFAULT_MYSQL) + f"_{mode}"


def fresh(db: str, mode: str, directory: Path) -> str:
    """A new database for one mode, migrated by azamrecon (and first by Django in portal mode)."""
    directory.mkdir(parents=True, exist_ok=True)
    if mode == "standalone":
        return common.fresh_sqlite(directory) if db == "sqlite" else common.fresh_mysql(_mysql_url(mode))
    url = f"sqlite:///{directory / 'portal.sqlite3'}" if db == "sqlite" else _mysql_url(mode)
    if db == "mysql":
        name, admin = make_url(url).database, create_engine(make_url(url).set(database=""))
        with admin.begin() as connection:  # this benchmark's own database, never another
            connection.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
            connection.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
        admin.dispose()
    _django_migrate(db, url)
    engine = azamrecon_engine(url, mode)
    upgrade(engine)
    engine.dispose()
    return url


def _django_migrate(db: str, url: str) -> None:
    """The portal's two tables made as the portal makes them: the test Django project's migrations."""
    from django.core.management import call_command
    from django.db import connections

    from tests.portal_django import setup

    parsed = make_url(url)
    memory = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
    mysql = {"ENGINE": "django.db.backends.mysql", "NAME": "-", "USER": parsed.username or "root"}
    mysql |= {"PASSWORD": parsed.password or "", "HOST": parsed.host or "127.0.0.1", "PORT": str(parsed.port or 3306)}
    setup({"default": memory, "sqlite": dict(memory), "mysql": mysql})  # once per process; NAME set per database
    connection = connections[db]
    connection.close()
    connection.settings_dict["NAME"] = parsed.database
    call_command("migrate", database=db, verbosity=0, interactive=False)
    connection.close()


def overrides(url: str, mode: str, workdir: Path) -> dict:
    values = {"database.url": url, "logging.dir": str(workdir / "logs"), "receiver.spool_dir": str(workdir / "spool")}
    values["privacy.key_file"] = str(workdir / "azamrecon.key")
    if mode == "portal":
        values |= {"portal.enabled": True, "database.table_prefix": PREFIX}
    return values


def azamrecon_engine(url: str, mode: str):
    return make_engine(DatabaseConfig(url=url, table_prefix=PREFIX if mode == "portal" else ""))


def portal_engine(url: str):
    """The portal's side, a plain engine as Django's own connection is: its inserts and its reader."""
    if url.startswith("sqlite"):
        return create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
    return create_engine(url, isolation_level="READ COMMITTED")


def insert_portal(engine, donations: list[tuple], patients: list[tuple] = ()) -> None:
    """(id, patient id, amount) donations as the portal's checkout leaves them; (id, funding required) patients."""
    now = datetime.now(UTC).replace(tzinfo=None)  # Django's naive UTC (USE_TZ)
    stamps = {"created_at": now, "updated_at": now}
    people = [
        {**PATIENT, **stamps, "id": i, "full_name": f"Patient {i}", "funding_required": f"{r}.00"} for i, r in patients
    ]
    donor = [
        {**DONOR, **stamps, "id": i, "patient_id": patient, "amount": f"{amount}.00", "patient_amount": f"{amount}.00"}
        | {"transaction_id": common.donation_reference(i)}
        for i, patient, amount in donations
    ]
    with engine.begin() as connection:
        for name, rows in (("auth_app_patientprofile", people), ("donor_donation", donor)):
            for start in range(0, len(rows), 5_000):
                columns = list(rows[0])
                sql = f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"
                connection.execute(text(sql), rows[start : start + 5_000])


def insert_standalone(engine, donations: list[tuple], patients: list[tuple] = ()) -> None:
    now = datetime.now(UTC)
    people = [dict(id=i, name=f"Patient {i}", funding_required=Decimal(r), created_at=now) for i, r in patients]
    rows = []
    for i, patient, amount in donations:
        money = {key: Decimal(amount) for key in ("amount", "patient_amount", "charge_amount")}
        rows.append(
            dict(id=i, patient_id=patient, currency="TZS", support_amount=Decimal(0), charge_currency="TZS", **money)
            | dict(msisdn="255628630936", provider="Halopesa", created_at=now, status="PENDING")
            | dict(external_reference=common.donation_reference(i))
        )
    with engine.begin() as connection:
        if people:
            connection.execute(insert(Patient.__table__), people)
        for start in range(0, len(rows), 5_000):
            connection.execute(insert(Donation.__table__), rows[start : start + 5_000])


# --- rebuild ---------------------------------------------------------------------------------------------------


def generate(count: int, seed: int = 7) -> tuple[list, list, list[bytes]]:
    """(donations, patients, callback bodies): 85% paid, 10% failed, 5% never answered; a quarter of the
    answers retried by AzamPay (duplicates); 5% more callbacks naming no donation."""
    rng = random.Random(seed)
    patients = [(i, 500 * rng.randrange(1_000, 5_000)) for i in range(1, max(1, count // 40) + 1)]
    donations, bodies, retries = [], [], []
    for i in range(1, count + 1):
        amount = 500 * rng.randrange(2, 200)
        donations.append((i, rng.randrange(1, len(patients) + 1) if rng.random() < 0.9 else None, amount))
        roll = rng.random()
        if roll < 0.95:
            bodies.append(_callback(i, amount, f"rb{i:08d}", "success" if roll < 0.85 else "failed"))
            if rng.random() < 0.25:
                retries.append(bodies[-1])
        if rng.random() < 0.05:
            bodies.append(_callback(10_000_000 + i, amount, f"un{i:08d}", "success"))
    return donations, patients, bodies + retries


def _callback(donation_id: int, amount: int, tid: str, status: str) -> bytes:
    data = json.loads(common.callback_body(common.donation_reference(donation_id), tid))
    data.update(amount=str(amount), transactionstatus=status, message=status.upper())
    return json.dumps(data).encode()


def append_callbacks(engine, bodies: list[bytes]) -> None:
    """The callbacks as the receiver stores them (pipeline.store.events), received over the last hour."""
    start = datetime.now(UTC) - timedelta(hours=1)
    rows = []
    for n, body in enumerate(bodies):
        at, fields = start + timedelta(milliseconds=n), extract_fields(body)
        rows.append(event_row(source="callback", body=body, received_at=at, auth="n/a", fields=fields))
    for begin in range(0, len(rows), 20_000):
        with transaction(engine) as session:
            append_events(session, rows[begin : begin + 20_000])


def rebuild_mode(db: str, mode: str, plan: tuple, workdir: Path) -> dict:
    """{step: seconds}, the events each rebuild folded, and the state left, for one mode."""
    donations, patients, bodies = plan
    print(f"bench.portal: {db} {mode} rebuild ...", file=sys.stderr, flush=True)
    url = fresh(db, mode, workdir / f"rebuild-{mode}")
    # the full comparison of every portal row is timed as its own step, not inside a rebuild
    values = overrides(url, mode, workdir) | {"portal.scan_interval_seconds": 1e6}
    config = load_config(None, environ={}, overrides=values)
    configure_logging(config.logging, component="rebuild", secrets=secrets_of(config), stderr_level="WARNING")
    engine = azamrecon_engine(url, mode)
    portal = portal_engine(url) if mode == "portal" else None
    (insert_portal if portal else insert_standalone)(portal or engine, donations, patients)
    append_callbacks(engine, bodies)
    result = {"rows": len(donations), "callbacks": len(bodies)}
    for step in STEPS[mode]:
        started = time.perf_counter()
        work = rebuild if step in ("rebuild", "again") else partial(sync_portal, full=True)
        report = work(engine, config, datetime.now(UTC))
        result[step] = time.perf_counter() - started
        result["events"] = getattr(report, "events", result.get("events"))
    with engine.connect() as connection:
        statuses = dict(connection.execute(text("SELECT status, COUNT(*) FROM donations GROUP BY status")).all())
        funded = connection.execute(text("SELECT COUNT(*) FROM patients WHERE status = 'FULLY_FUNDED'")).scalar()
    result |= {"statuses": dict(sorted(statuses.items())), "funded": funded}
    if portal is not None:  # what the portal's own pages now read
        with portal.connect() as connection:
            count = "SELECT COUNT(*) FROM {} WHERE status = '{}'"
            shown = connection.execute(text(count.format("donor_donation", "COMPLETED"))).scalar()
            shown_funded = connection.execute(text(count.format("auth_app_patientprofile", "FULLY_FUNDED"))).scalar()
        result |= {"portal_completed": shown, "portal_funded": shown_funded}
        portal.dispose()
    engine.dispose()
    return result


# --- callback -> COMPLETED -------------------------------------------------------------------------------------


def latency_mode(db: str, mode: str, count: int, rate: float, workdir: Path) -> dict:
    print(f"bench.portal: {db} {mode} callback -> COMPLETED ...", file=sys.stderr, flush=True)
    directory = workdir / f"latency-{mode}"
    url = fresh(db, mode, directory)
    dead = f"http://127.0.0.1:{common.free_port()}"  # nothing leaves the machine
    values = overrides(url, mode, directory) | {"azampay.auth_url": dead, "azampay.checkout_url": dead}
    config = common.write_config(directory / "config.yaml", values)
    ours, portal = azamrecon_engine(url, mode), portal_engine(url) if mode == "portal" else None
    reader = portal or ours
    query = text(f"SELECT id FROM {'donor_donation' if portal else 'donations'} WHERE status = 'COMPLETED'")
    posted, completed, answered, statuses = {}, {}, [], {}  # by donation id: POST start, COMPLETED seen
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with reader.connect() as connection:
                ids = list(connection.execute(query).scalars())
            seen = time.perf_counter()
            for donation_id in ids:
                completed.setdefault(donation_id, seen)
            stop.wait(POLL_EVERY)

    serve = common.serve_process(config, directory / "proc", name="serve")
    command = [sys.executable, "-m", "jobs.cli", "scheduler", "--config", str(config)]
    scheduler = common.Process(command, directory / "proc", "scheduler")
    try:
        serve.start()
        scheduler.start()
        time.sleep(1.0)  # the scheduler's first fold tick
        if not scheduler.alive():
            raise RuntimeError(f"scheduler exited:\n{scheduler.output()[-3000:]}")
        threading.Thread(target=watch, name="watch", daemon=True).start()
        with httpx.Client(timeout=10.0) as client:
            begin = time.perf_counter()
            for i in range(1, count + 1):
                time.sleep(max(0.0, begin + (i - 1) / rate - time.perf_counter()))
                donation = [(i, None, 25_000)]  # the checkout creates it a moment before AzamPay calls back
                insert_portal(portal, donation) if portal else insert_standalone(ours, donation)
                body = common.callback_body(common.donation_reference(i), f"{mode[:3]}{i:07d}")
                posted[i] = time.perf_counter()
                answer = client.post(serve.url + common.CALLBACK_PATH, content=body, headers=JSON)
                answered.append(time.perf_counter() - posted[i])
                statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
                if time.perf_counter() - begin > count / rate * 3 + 30:  # bounded even if the server crawls
                    break
        deadline = time.perf_counter() + 15.0
        while len(completed) < len(posted) and time.perf_counter() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        scheduler.stop()
        serve.stop()
        for engine in filter(None, (ours, portal)):
            engine.dispose()
    latencies = [completed[i] - posted[i] for i in posted if i in completed]
    ok = sum(n for status, n in statuses.items() if 200 <= status < 300)
    result = {"db": db, "mode": mode, "posted": len(posted), "ok": ok, "completed": len(latencies)}
    return result | {"answer_p99": _pct(answered, 99), "p50": _pct(latencies, 50), "p99": _pct(latencies, 99)}


# --- the run ---------------------------------------------------------------------------------------------------


def _per_second(count: int, seconds: float | None) -> float | None:
    return count / seconds if seconds else None


def render(dbs, rebuilt: dict, timed: dict) -> list[str]:
    """One row per backend and mode; the portal rows' ratios are portal / standalone in the same run."""
    cells, states = [], []
    for db in dbs:
        alone = rebuilt[db, "standalone"]
        for mode in MODES:
            r, t = rebuilt[db, mode], timed[db, mode]
            row = [db, mode, r["events"], _per_second(r["rows"], r.get("read"))]
            for step in ("rebuild", "again"):  # events/s ratio, then on the same callbacks the time's
                same = ratio(r["events"] / r[step], alone["events"] / alone[step]) + f" ({ratio(alone[step], r[step])})"
                row += [r[step], r["events"] / r[step], same if mode == "portal" else "-"]
            row += [_per_second(r["rows"], r.get("compare")), t["posted"], t["ok"], t["completed"]]
            row += [None if v is None else v * 1000 for v in (t["answer_p99"], t["p50"], t["p99"])]
            alone_p99 = timed[db, "standalone"]["p99"]
            row.append(ratio(t["p99"], alone_p99) if mode == "portal" and t["p99"] and alone_p99 else "-")
            met = t["p99"] is not None and t["p99"] <= TARGET_P99_S and t["completed"] == t["posted"]
            cells.append(row + ["MET" if met else "NOT MET"])
        ours = rebuilt[db, "portal"]
        checks = {
            "donation statuses equal in both modes": alone["statuses"] == ours["statuses"],
            "portal rows COMPLETED as azamrecon's": ours["portal_completed"] == ours["statuses"].get("COMPLETED") > 0,
            "FULLY_FUNDED patients equal in both modes and the portal": alone["funded"]
            == ours["funded"]
            == ours["portal_funded"],
        }
        wrong = [check for check, ok in checks.items() if not ok]
        states.append(
            f"{db} {'NO (' + '; '.join(wrong) + ')' if wrong else 'yes'} ({ours['statuses']}, FULLY_FUNDED {ours['funded']:,})"
        )
    headers = "db|mode|log events|first read rows/s|rebuild s|events/s|x standalone (callbacks)|again s|events/s"
    headers += "|x standalone (callbacks)|full compare rows/s|callbacks|2xx|COMPLETED|answer p99 ms|p50 ms|p99 ms"
    lines = [table((headers + "|p99 x standalone|result").split("|"), cells)]
    lines.append(f"state, both modes and the portal's rows agree: {', '.join(states)}")
    missing = [
        f"{db} {mode} {t['posted'] - t['completed']}" for (db, mode), t in timed.items() if t["completed"] < t["posted"]
    ]
    if missing:
        lines.append(f"FAILED: donations not COMPLETED within 15 s of the last callback: {', '.join(missing)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.portal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--db", choices=("sqlite", "mysql", "both"), default="sqlite")
    parser.add_argument("--donations", type=int, help="donations in the rebuild's log (default 50,000; quick 2,000)")
    parser.add_argument("--callbacks", type=int, help="callbacks per mode for the latency (default 600; quick 120)")
    parser.add_argument("--rate", type=float, default=20.0, help="callbacks per second (default 20)")
    args = parser.parse_args(argv)
    dbs = ("sqlite", "mysql") if args.db == "both" else (args.db,)
    if "mysql" in dbs and (reason := common.mysql_reachable(_mysql_url("portal"))):
        raise SystemExit(f"MariaDB not reachable: {reason}")
    count = args.donations or (2_000 if args.quick else 50_000)
    callbacks = args.callbacks or (120 if args.quick else 600)
    started, plan, defaults = time.monotonic(), generate(count), Config()
    print(f"bench.portal ({', '.join(dbs)}{', quick' if args.quick else ''}) | {common.machine_line()}")
    print(
        f"rebuild: {count:,} donations, {len(plan[1]):,} patients, {len(plan[2]):,} callbacks; jobs.rebuild.rebuild of a "
        "log never folded (portal: its rows read first, every result written), then again (the portal current)"
    )
    print(
        f"latency: {callbacks} callbacks per mode at {args.rate:g}/s, each donation created just before its callback; "
        f"serve --workers {defaults.receiver.workers}, scheduler.fold_interval_seconds="
        f"{defaults.scheduler.fold_interval_seconds:g} (defaults); POST -> a reader polling every {POLL_EVERY * 1000:.0f} "
        f"ms sees donations.status (standalone) or donor_donation.status (portal) COMPLETED; target p99 <= {TARGET_P99_S:g} s"
    )
    with tempfile.TemporaryDirectory(prefix="bench-portal-") as temp:
        rebuilt = {(db, mode): rebuild_mode(db, mode, plan, Path(temp) / db) for db in dbs for mode in MODES}
        timed = {
            (db, mode): latency_mode(db, mode, callbacks, args.rate, Path(temp) / db) for db in dbs for mode in MODES
        }
    lines = render(dbs, rebuilt, timed)
    print("\n".join(lines))
    print(f"total {time.monotonic() - started:.0f} s")
    return 1 if " NO (" in lines[1] or lines[-1].startswith("FAILED") else 0


if __name__ == "__main__":
    sys.exit(main())

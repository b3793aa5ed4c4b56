"""Fold and rebuild benchmark: `python -m bench.fold [--quick] [--db sqlite|mysql] [--events N]`.

One run generates a realistic log with raw executemany inserts (donations created over weeks; per
donation a checkout answer, its callback within minutes, AzamPay's retried duplicates, poll answers
for the stuck ones at the poller's backoff, plus failures, amount mismatches, unknown references and
invalid payloads), then measures, each phase in a fresh subprocess (so generation never pollutes its
peak RSS):

- ceiling: a raw DBAPI scan of exactly the event columns the fold reads;
- write ceiling: the rows the rebuild wrote (anomalies, donation updates, credits), rewritten in one
  transaction with the fold store's own statements; scan + writes is the storage floor of a rebuild,
  with no Python fold;
- rules: the fold's Python alone, fold_batch into rebuild --check's in-memory store with the batch reads
  not timed; storage floor + rules is the serial floor of this design on one core, and half of it the
  bound if both cores shared that work perfectly (arithmetic, printed as such);
- naive: one ORM transaction per event (load the donation through the ORM, pipeline.fold.apply, write
  donation + credit + anomalies + patient through the ORM, commit) over the first --naive events;
- rebuild: jobs.rebuild.rebuild over the whole log (and over a log 1/10 the size, for RSS flatness);
- incremental: reset, then jobs.fold.run_fold at the configured batch size with production logging;
- digest: the derived state after rebuild and after the incremental fold must be identical.

It prints one table with the ratios rebuild/ceiling, rebuild/storage floor, rebuild/serial floor and rebuild/naive from this run. `--json PATH`
also writes the figures (the CI smoke test reads them and asserts invariants, never times).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.common import REPO, fresh_mysql, fresh_sqlite, machine_line, mysql_reachable

NOW = datetime(2026, 3, 1, tzinfo=UTC)
START = datetime(2026, 1, 1, tzinfo=UTC)
DEFAULT_MYSQL_BENCH = "mysql+pymysql://root@127.0.0.1:3306/azamrecon_benchfold_run"

EVENT_INSERT_COLUMNS = (
    "id",
    "received_at",
    "source",
    "body",
    "body_sha256",
    "content_type",
    "remote_addr",
    "headers",
    "utilityref",
    "externalreference",
    "donation_hint",
    "transaction_ref",
    "status_raw",
    "status",
    "amount",
    "operator",
    "msisdn",
    "donation_id",
    "parse_error",
    "auth",
)
FOLD_COLUMNS = (
    "id",
    "received_at",
    "source",
    "auth",
    "status",
    "amount",
    "utilityref",
    "externalreference",
    "donation_hint",
    "transaction_ref",
    "donation_id",
    "parse_error",
    "status_raw",
)
PROVIDERS = ("Mpesa", "Airtel", "Tigo", "Halopesa", "Azampesa")

CALLBACK = (
    '{"message":"%s","user":null,"password":null,"clientId":null,"transactionstatus":"%s","operator":"%s",'
    '"reference":"%s","externalreference":"%s","utilityref":"%s","amount":"%s","transid":"%s",'
    '"msisdn":"%s","mnoreference":"%s","submerchantAcc":null,"additionalProperties":{}}'
)
POLL_ANSWER = (
    '{"data":"%s","message":"Transaction status retrieved","success":true,"statusCode":200,"transactionId":"%s"}'
)
CHECKOUT_ANSWER = '{"success":true,"transactionId":"%s","message":"Request in progress. You will receive a callback shortly","messageCode":0}'


# --- generation -------------------------------------------------------------------------------------


class Log:
    """Rows for patients, donations and events; values already in the backend's storage form."""

    def __init__(self, sqlite: bool):
        self.sqlite = sqlite
        self.patients: list[tuple] = []
        self.donations: list[tuple] = []
        self.events: list[list] = []

    def when(self, moment: datetime):
        naive = moment.replace(tzinfo=None)
        return naive.strftime("%Y-%m-%d %H:%M:%S.%f") if self.sqlite else naive

    def money(self, value: int):
        """value in whole TZS."""
        return value * 100 if self.sqlite else Decimal(value)


def generate(events: int, donations: int, patients: int, sqlite: bool, seed: int = 6) -> Log:
    """`events` events (exactly) about `donations` donations of `patients` patients; ids in received order."""
    scale = 1.1
    for _ in range(4):
        log, produced = _generate(events, donations, patients, sqlite, seed, scale)
        if log is not None:
            return log
        scale *= events / produced * 1.05
    raise SystemExit(f"generator produced {produced} events for {events} asked; lower --events or raise --donations")


def _generate(
    events: int, donations: int, patients: int, sqlite: bool, seed: int, scale: float
) -> tuple[Log | None, int]:
    rng = random.Random(seed)
    log = Log(sqlite)
    span = timedelta(days=45)
    for pid in range(1, patients + 1):
        required = rng.randrange(200, 2000) * 1000
        log.patients.append((pid, f"Patient {pid}", log.money(required), log.when(START), log.money(0), "FUNDING"))

    # Events per donation beyond checkout + outcome callback, tuned so the total is `events`.
    base = 1.95
    extra = max(0.0, events / donations - base) * scale  # a surplus; the latest events are cut off
    dup_rate = extra * 0.30  # AzamPay retries (duplicates), ~20% of events at 5 events/donation
    poll_rate = extra * 0.45  # poll answers (pending checks, late confirmations)
    unknown_rate = extra * 0.15  # callbacks naming no donation we know
    invalid_rate = extra * 0.03  # bodies that did not parse
    raw: list[tuple] = []  # (received_at, row-without-id)
    step = span / donations
    for did in range(1, donations + 1):
        created = START + step * did + timedelta(seconds=rng.random() * 5)
        patient = rng.randrange(1, patients + 1) if rng.random() < 0.9 else None
        amount = rng.randrange(2, 200) * 500
        patient_amount = amount if rng.random() < 0.8 else amount * 9 // 10
        provider = PROVIDERS[did % 5]
        msisdn = f"2557{did % 100000000:08d}"
        ref = f"RHCI-DN-{did}-{created:%Y%m%d%H%M%S}"
        checkout_ok = rng.random() < 0.97
        tid = f"{rng.getrandbits(64):016x}-{did:08x}-azam" if checkout_ok else None
        log.donations.append(
            (
                did,
                patient,
                log.money(amount),
                "TZS",
                log.money(patient_amount),
                log.money(amount - patient_amount),
                log.money(amount),
                "TZS",
                msisdn,
                provider,
                ref,
                tid,
                log.when(created),
            )
        )
        t = created + timedelta(seconds=1 + rng.random() * 2)
        if not checkout_ok:
            body = '{"success":false,"message":"Invalid Vendor"}'
            raw.append(
                (
                    t,
                    _row(
                        "checkout",
                        body,
                        status_raw="checkout rejected: Invalid Vendor",
                        status="FAILED",
                        donation_id=did,
                    ),
                )
            )
            continue
        raw.append(
            (
                t,
                _row(
                    "checkout",
                    CHECKOUT_ANSWER % tid,
                    transaction_ref=tid,
                    status_raw="Request in progress",
                    status="PENDING",
                    operator=provider,
                    donation_id=did,
                ),
            )
        )

        def callback(at: datetime, status: str, paid: int) -> None:
            word = {"SUCCESS": "success", "FAILED": "failed"}[status]
            body = CALLBACK % (status, word, provider, tid, tid, ref, paid, tid, msisdn, tid[:12])
            raw.append(
                (
                    at,
                    _row(
                        "callback",
                        body,
                        remote_addr="127.0.0.1",
                        utilityref=ref,
                        externalreference=tid,
                        transaction_ref=tid,
                        status_raw=word,
                        status=status,
                        amount=log.money(paid),
                        operator=provider,
                        msisdn=msisdn,
                    ),
                )
            )

        def poll(at: datetime, status: str) -> None:
            text = {"SUCCESS": "success", "FAILED": "failed", "PENDING": "pending"}[status]
            raw.append(
                (
                    at,
                    _row(
                        "poll",
                        POLL_ANSWER % (text, tid),
                        transaction_ref=tid,
                        status_raw=text,
                        status=status,
                        operator=provider,
                        donation_id=did,
                    ),
                )
            )

        roll = rng.random()
        delay = timedelta(seconds=5 + rng.expovariate(1 / 40))
        outcome = None
        if roll < 0.78:
            outcome = ("SUCCESS", amount)
        elif roll < 0.90:
            outcome = ("FAILED", amount)
        elif roll < 0.91:
            outcome = ("SUCCESS", amount + 500)  # amount mismatch -> REVIEW
        if outcome:
            callback(t + delay, *outcome)
            at = t + delay
            for _ in range(_poisson(rng, dup_rate)):
                at += timedelta(seconds=20 + rng.random() * 180)
                callback(at, *outcome)
        # stuck ones are polled at the backoff (10, 20, 40 min, ...); a few confirmed ones get a late check too
        polls = _poisson(rng, poll_rate / 0.3) if (not outcome or rng.random() < 0.2) else 0
        at = created + timedelta(minutes=10)
        for k in range(polls):
            last = k == polls - 1
            status = (
                ("SUCCESS" if rng.random() < 0.7 else "FAILED")
                if last and not outcome
                else "PENDING"
                if not outcome
                else outcome[0]
            )
            poll(at + timedelta(seconds=rng.random() * 60), status)
            at += timedelta(minutes=10 * 2**k)
        for _ in range(_poisson(rng, unknown_rate)):
            other = f"RHCI-DN-{donations + 10_000_000 + rng.randrange(10**6)}-20251231120000"
            fake = f"{rng.getrandbits(64):016x}-unknown"
            body = CALLBACK % ("SUCCESS", "success", provider, fake, fake, other, amount, fake, msisdn, fake[:12])
            raw.append(
                (
                    created + timedelta(seconds=rng.random() * 600),
                    _row(
                        "callback",
                        body,
                        remote_addr="127.0.0.1",
                        utilityref=other,
                        externalreference=fake,
                        transaction_ref=fake,
                        status_raw="success",
                        status="SUCCESS",
                        amount=log.money(amount),
                        operator=provider,
                        msisdn=msisdn,
                    ),
                )
            )
        for _ in range(_poisson(rng, invalid_rate)):
            raw.append(
                (
                    created + timedelta(seconds=rng.random() * 600),
                    _row(
                        "callback",
                        '{"transactionstatus": "success", "utilityref": ',
                        remote_addr="127.0.0.1",
                        parse_error="invalid JSON: Expecting value: line 1 column 47",
                    ),
                )
            )
    raw.sort(key=lambda item: item[0])
    if len(raw) < events:
        return None, len(raw)
    del raw[events:]
    for position, (at, row) in enumerate(raw, 1):
        body = row[1].encode()
        row[1] = body
        log.events.append((position, log.when(at), row[0], body, hashlib.sha256(body).hexdigest(), *row[2:]))
    return log, len(log.events)


_ROW_FIELDS = EVENT_INSERT_COLUMNS[5:]  # after id, received_at, source, body, body_sha256


def _row(source: str, body: str, **values: Any) -> list:
    """[source, body, content_type, remote_addr, ..., auth] in EVENT_INSERT_COLUMNS order."""
    values.setdefault("content_type", "application/json")
    values.setdefault("auth", "n/a")
    return [source, body, *(values.get(name) for name in _ROW_FIELDS)]


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    count, threshold, product = 0, pow(2.718281828459045, -mean), rng.random()
    while product > threshold and count < 50:
        count += 1
        product *= rng.random()
    return count


def load(url: str, log: Log) -> None:
    """Raw executemany inserts, in chunks, one transaction per table."""
    from bench.common import engine_for

    engine = engine_for(url)
    raw = engine.raw_connection()
    try:
        mark = "?" if log.sqlite else "%s"
        cursor = raw.cursor()

        def insert(table: str, columns: tuple[str, ...], rows: list, chunk: int = 20_000) -> None:
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"
            if log.sqlite:
                cursor.execute("BEGIN")
            for start in range(0, len(rows), chunk):
                cursor.executemany(sql, rows[start : start + chunk])
            raw.commit() if not log.sqlite else cursor.execute("COMMIT")

        insert("patients", ("id", "name", "funding_required", "created_at", "funding_received", "status"), log.patients)
        insert(
            "donations",
            (
                "id",
                "patient_id",
                "amount",
                "currency",
                "patient_amount",
                "support_amount",
                "charge_amount",
                "charge_currency",
                "msisdn",
                "provider",
                "external_reference",
                "transaction_id",
                "created_at",
            ),
            log.donations,
        )
        insert("payment_events", EVENT_INSERT_COLUMNS, log.events, chunk=5_000)
        cursor.close()
    finally:
        raw.close()
        engine.dispose()


# --- phases (each in its own process) ----------------------------------------------------------------


def _config(url: str, workdir: str):
    from pipeline.config import load_config

    return load_config(None, environ={}, overrides={"database.url": url, "logging.dir": str(Path(workdir) / "logs")})


def _rss_mb() -> float:
    """Peak RSS of this phase process: VmHWM of its own address space. (ru_maxrss would also count the
    parent's memory at fork/exec time, i.e. the generated log.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_ceiling(url: str, workdir: str, limit: int | None) -> dict:
    from bench.common import engine_for

    engine = engine_for(url)
    raw = engine.raw_connection()
    started = time.perf_counter()
    cursor = raw.cursor()
    sql = f"SELECT {', '.join(FOLD_COLUMNS)} FROM payment_events ORDER BY id"
    if limit:
        sql += f" LIMIT {int(limit)}"
    cursor.execute(sql)
    rows = 0
    while True:
        chunk = cursor.fetchmany(20_000)
        if not chunk:
            break
        rows += len(chunk)
    seconds = time.perf_counter() - started
    cursor.close()
    raw.close()
    engine.dispose()
    return {"events": rows, "seconds": seconds}


def phase_writes(url: str, workdir: str, limit: int | None) -> dict:
    """The storage side of the ceiling: the rows a rebuild wrote (its anomalies, donation updates and
    credits), read back and written again in one transaction with the statements the fold's store uses
    (executemany; on MySQL the donation updates through a temporary table, pipeline.store.driver's
    update_rows), durability settings unchanged. Run right after a rebuild; the state it leaves is the same."""
    from bench.common import engine_for
    from pipeline.fold import DERIVED_FIELDS
    from pipeline.store.driver import Driver

    engine = engine_for(url)
    with engine.begin() as connection:
        raw = Driver(connection)
        anomalies = raw.fetch("SELECT event_id, donation_id, kind, detail FROM anomalies ORDER BY id")
        donations = raw.fetch(f"SELECT {', '.join(DERIVED_FIELDS)}, id FROM donations ORDER BY id")
        credits = raw.fetch(
            "SELECT donation_id, patient_id, amount, event_id, credited_at FROM funding_credits ORDER BY id"
        )
        raw.execute("DELETE FROM anomalies")
        raw.execute("DELETE FROM funding_credits")
        started = time.perf_counter()
        raw.many(f"INSERT INTO anomalies (event_id, donation_id, kind, detail) VALUES {raw.marks(4)}", anomalies)
        raw.update_rows("donations", DERIVED_FIELDS, donations)
        raw.many(
            f"INSERT INTO funding_credits (donation_id, patient_id, amount, event_id, credited_at) VALUES {raw.marks(5)}",
            credits,
        )
    seconds = time.perf_counter() - started  # the commit included
    engine.dispose()
    return {
        "rows": len(anomalies) + len(donations) + len(credits),
        "anomalies": len(anomalies),
        "donations": len(donations),
        "credits": len(credits),
        "seconds": seconds,
    }


def phase_rebuild(url: str, workdir: str, limit: int | None) -> dict:
    from jobs.rebuild import rebuild
    from pipeline.db import make_engine

    config = _config(url, workdir)
    engine = make_engine(config.database)
    _quiet_logging(config)
    started = time.perf_counter()
    report = rebuild(engine, config, NOW)
    seconds = time.perf_counter() - started
    engine.dispose()
    return {
        "events": report.events,
        "batches": report.batches,
        "seconds": seconds,
        "credits": report.credits_added,
        "anomalies": report.anomalies,
    }


def phase_profile(url: str, workdir: str, limit: int | None) -> dict:
    """The rebuild again, under pyinstrument (sampling; its time is not the one the table reports)."""
    from pyinstrument import Profiler

    from jobs.rebuild import rebuild
    from pipeline.db import make_engine

    config = _config(url, workdir)
    engine = make_engine(config.database)
    _quiet_logging(config)
    profiler = Profiler(interval=0.001)
    started = time.perf_counter()
    with profiler:
        report = rebuild(engine, config, NOW)
    seconds = time.perf_counter() - started
    engine.dispose()
    path = Path(workdir) / "rebuild-profile.txt"
    path.write_text(profiler.output_text(unicode=True, color=False, short_mode=False))
    return {"events": report.events, "seconds": seconds, "path": str(path)}


def phase_incremental(url: str, workdir: str, limit: int | None) -> dict:
    from jobs.fold import run_fold
    from pipeline.db import make_engine, transaction
    from pipeline.logs import configure_logging, secrets_of
    from pipeline.store.checkpoint import CHECKPOINT
    from pipeline.store.state import SqlFoldStore

    config = _config(url, workdir)
    engine = make_engine(config.database)
    configure_logging(config.logging, component="fold", secrets=secrets_of(config), stderr_level="WARNING")
    with transaction(engine, immediate=True) as session:
        store = SqlFoldStore(session)
        store.lock_checkpoint(CHECKPOINT)
        store.reset_derived(CHECKPOINT)
    started = time.perf_counter()
    report = run_fold(engine, config, NOW)
    seconds = time.perf_counter() - started
    engine.dispose()
    return {
        "events": report.events,
        "batches": report.batches,
        "seconds": seconds,
        "batch_size": config.fold.batch_size,
    }


def phase_naive(url: str, workdir: str, limit: int | None) -> dict:
    """One ORM transaction per event, the way a hand-written webhook view folds (the baseline)."""
    from sqlalchemy import or_, select

    from pipeline.db import make_engine, transaction
    from pipeline.fold import DERIVED_FIELDS, STATIC_FIELDS, DonationState, FoldEvent, apply, credit_of
    from pipeline.fold_batch import trust_policy
    from pipeline.models import Anomaly, Donation, FundingCredit, Patient, PaymentEvent
    from pipeline.store.checkpoint import CHECKPOINT
    from pipeline.store.state import SqlFoldStore

    config = _config(url, workdir)
    engine = make_engine(config.database)
    policy = trust_policy(config)
    with transaction(engine, immediate=True) as session:
        store = SqlFoldStore(session)
        store.lock_checkpoint(CHECKPOINT)
        store.reset_derived(CHECKPOINT)
        ids = list(session.scalars(select(PaymentEvent.id).order_by(PaymentEvent.id).limit(limit)))
    started = time.perf_counter()
    for event_id in ids:
        with transaction(engine, immediate=True) as session:
            row = session.get(PaymentEvent, event_id)
            event = FoldEvent(*(getattr(row, name) for name in FoldEvent._fields))
            if event.parse_error:
                session.add(
                    Anomaly(event_id=event.id, donation_id=None, kind="invalid_payload", detail=event.parse_error[:500])
                )
                continue
            conditions = []
            if event.donation_id is not None:
                conditions.append(Donation.id == event.donation_id)
            for reference in (event.utilityref, event.externalreference):
                if reference:
                    conditions.append(Donation.external_reference == reference)
            for reference in (event.transaction_ref, event.externalreference):
                if reference:
                    conditions.append(Donation.transaction_id == reference)
            donation = (
                session.scalars(select(Donation).where(or_(*conditions)).limit(1)).first() if conditions else None
            )
            if donation is None:
                session.add(
                    Anomaly(event_id=event.id, donation_id=None, kind="unknown_reference", detail="no donation")
                )
                continue
            state = DonationState(*(getattr(donation, name) for name in STATIC_FIELDS + DERIVED_FIELDS))
            before = credit_of(state)
            anomalies, _ = apply(state, event, policy)
            for name in DERIVED_FIELDS:
                setattr(donation, name, getattr(state, name))
            for record in anomalies:
                session.add(Anomaly(**record._asdict()))
            after = credit_of(state)
            if after != before:
                if before is not None:
                    session.delete(
                        session.scalars(select(FundingCredit).where(FundingCredit.donation_id == donation.id)).one()
                    )
                if after is not None:
                    session.add(FundingCredit(**after._asdict()))
                if donation.patient_id is not None:
                    patient = session.get(Patient, donation.patient_id)
                    patient.funding_received += (after.amount if after else 0) - (before.amount if before else 0)
                    if patient.funding_received >= patient.funding_required and patient.status != "FULLY_FUNDED":
                        patient.status, patient.fully_funded_at = "FULLY_FUNDED", state.completed_at
    seconds = time.perf_counter() - started
    engine.dispose()
    return {"events": len(ids), "seconds": seconds}


def phase_rules(url: str, workdir: str, limit: int | None) -> dict:
    """The fold's Python alone: the whole log folded into rebuild --check's in-memory store, batch by batch
    as a rebuild does, timing only fold_batch (reading each batch is not timed; nothing is written). With
    the storage floor it bounds what any rebuild of this design can reach on this machine."""
    from jobs.fold import collector_paused
    from jobs.rebuild import REBUILD_BATCH
    from pipeline.db import make_engine, transaction
    from pipeline.fold_batch import fold_batch, trust_policy
    from pipeline.store.memory import MemoryFoldStore

    config = _config(url, workdir)
    engine = make_engine(config.database)
    policy = trust_policy(config)
    seconds, events, position = 0.0, 0, 0
    with transaction(engine) as session:
        memory = MemoryFoldStore(session)
        while batch := memory.events_after(position, REBUILD_BATCH):
            position = batch[-1].id
            started = time.perf_counter()
            with collector_paused():
                fold_batch(memory, batch, [], policy)
            seconds += time.perf_counter() - started
            events += len(batch)
        snap = memory.snapshot()
    engine.dispose()
    return {"events": events, "seconds": seconds, "sha256": _digest(snap)["sha256"]}


def phase_digest(url: str, workdir: str, limit: int | None) -> dict:
    """A hash of the whole derived state (pipeline.store.snapshot, what rebuild --check compares) and counts."""
    from pipeline.db import make_engine, transaction
    from pipeline.store.snapshot import live_snapshot

    config = _config(url, workdir)
    engine = make_engine(config.database)
    with transaction(engine) as session:
        snap = live_snapshot(session)
    engine.dispose()
    return _digest(snap)


def _digest(snap) -> dict:
    from collections import Counter

    digest = hashlib.sha256()
    for part in (snap.donations, snap.credits, snap.patients):
        for key in sorted(part):
            digest.update(repr((key, part[key])).encode())
    for key in sorted(snap.anomalies.elements(), key=repr):
        digest.update(repr(key).encode())
    statuses = Counter(values[0] for values in snap.donations.values())
    kinds = Counter(key[2] for key in snap.anomalies.elements())
    return {
        "sha256": digest.hexdigest(),
        "donations": len(snap.donations),
        "statuses": dict(sorted(statuses.items())),
        "credits": len(snap.credits),
        "anomalies": dict(sorted(kinds.items())),
        "fully_funded": sum(1 for values in snap.patients.values() if values[1] == "FULLY_FUNDED"),
    }


def _quiet_logging(config) -> None:
    from pipeline.logs import configure_logging, secrets_of

    configure_logging(config.logging, component="rebuild", secrets=secrets_of(config), stderr_level="WARNING")


PHASES = {
    "ceiling": phase_ceiling,
    "rebuild": phase_rebuild,
    "incremental": phase_incremental,
    "naive": phase_naive,
    "digest": phase_digest,
    "profile": phase_profile,
    "writes": phase_writes,
    "rules": phase_rules,
}


def run_phase(name: str, url: str, workdir: str, limit: int | None = None, timeout: float = 900) -> dict:
    command = [sys.executable, "-m", "bench.fold", "_phase", name, "--url", url, "--workdir", workdir]
    if limit:
        command += ["--limit", str(limit)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZAM") and k != "DATABASE_URL"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"phase {name} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the run ---------------------------------------------------------------------------------------------


def prepare(db: str, workdir: Path, name: str, events: int, donations: int, patients: int) -> tuple[str, float]:
    started = time.perf_counter()
    if db == "sqlite":
        directory = workdir / name
        directory.mkdir(parents=True, exist_ok=True)
        url = fresh_sqlite(directory)
    else:
        base = os.environ.get("AZAMRECON_BENCH_FOLD_MYSQL_URL", DEFAULT_MYSQL_BENCH)
        url = fresh_mysql(base if name == "full" else base + "_" + name)
    log = generate(events, donations, patients, sqlite=db == "sqlite")
    load(url, log)
    return url, time.perf_counter() - started


def sqlite_settings(url: str) -> str:
    from pipeline.db import make_engine
    from pipeline.sections import DatabaseConfig

    engine = make_engine(DatabaseConfig(url=url))
    with engine.connect() as connection:
        journal = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
        sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(
            connection.exec_driver_sql("PRAGMA synchronous").scalar()
        )
    engine.dispose()
    return f"journal_mode={journal}, synchronous={sync}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fold", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    phase = sub.add_parser("_phase")
    phase.add_argument("name", choices=sorted(PHASES))
    phase.add_argument("--url", required=True)
    phase.add_argument("--workdir", required=True)
    phase.add_argument("--limit", type=int)
    parser.add_argument("--db", choices=("sqlite", "mysql"), default="sqlite")
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--events", type=int, help="log length (default 1,000,000 on SQLite, 200,000 on MariaDB)")
    parser.add_argument("--donations", type=int, help="default events / 5")
    parser.add_argument("--patients", type=int, help="default donations / 40")
    parser.add_argument("--naive", type=int, help="events folded by the naive baseline (default 50,000)")
    parser.add_argument("--workdir", help="where the SQLite files and logs go (default: a temporary directory)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--profile", help="after the table, profile one more rebuild with pyinstrument and write its report here"
    )
    args = parser.parse_args(argv)

    if args.command == "_phase":
        result = PHASES[args.name](args.url, args.workdir, args.limit)
        result["rss_mb"] = round(_rss_mb(), 1)
        print(json.dumps(result))
        return 0

    if args.db == "mysql":
        reason = mysql_reachable(os.environ.get("AZAMRECON_BENCH_FOLD_MYSQL_URL", DEFAULT_MYSQL_BENCH))
        if reason:
            raise SystemExit(f"MariaDB not reachable: {reason}")
    default_events = (
        (100_000 if args.quick else 1_000_000) if args.db == "sqlite" else (50_000 if args.quick else 200_000)
    )
    events = args.events or default_events
    donations = args.donations or max(1, events // 5)
    patients = args.patients or max(1, donations // 40)
    naive = min(args.naive or (5_000 if args.quick else 50_000), events)
    small = max(1_000, events // 10)

    temp = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        temp = tempfile.TemporaryDirectory(prefix="bench-fold-")
        workdir = Path(temp.name)
    try:
        print(
            f"bench.fold: {args.db}, generating {events:,} events / {donations:,} donations / {patients:,} patients "
            f"(+ a {small:,}-event log for RSS) ...",
            file=sys.stderr,
            flush=True,
        )
        url, generation = prepare(args.db, workdir, "full", events, donations, patients)
        small_url, _ = prepare(
            args.db,
            workdir,
            "small",
            small,
            max(1, small // 5 if not args.donations else donations * small // events),
            max(1, patients // 10 if not args.patients else patients),
        )
        settings = sqlite_settings(url) if args.db == "sqlite" else "MariaDB, READ COMMITTED (pipeline.db defaults)"
        wd = str(workdir)
        results: dict[str, Any] = {}
        for name, target, limit in (
            ("naive", url, naive),
            ("ceiling", url, None),
            ("rebuild", url, None),
            ("digest_rebuild", url, None),
            ("writes", url, None),
            ("rules", url, None),
            ("incremental", url, None),
            ("digest_incremental", url, None),
            ("rebuild_small", small_url, None),
        ):
            print(f"bench.fold: {name} ...", file=sys.stderr, flush=True)
            results[name] = run_phase(name.split("_")[0], target, wd, limit)
        table = render(args, events, donations, patients, naive, small, settings, generation, results)
        print(table)
        if args.profile:
            print("bench.fold: profile (pyinstrument) ...", file=sys.stderr, flush=True)
            profiled = run_phase("profile", url, wd)
            Path(args.profile).write_text(Path(profiled["path"]).read_text())
            print(f"pyinstrument profile of a rebuild ({profiled['seconds']:.1f}s under the profiler): {args.profile}")
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        "events": events,
                        "donations": donations,
                        "patients": patients,
                        "naive_events": naive,
                        "small_events": small,
                        "settings": settings,
                        "results": results,
                    },
                    indent=2,
                )
            )
    finally:
        if temp is not None:
            temp.cleanup()
    return 0


def render(args, events, donations, patients, naive, small, settings, generation, r: dict) -> str:
    def rate(result: dict) -> float:
        return result["events"] / result["seconds"] if result["seconds"] else float("inf")

    ceiling, rebuild, naive_r, incremental, small_r = (
        r["ceiling"],
        r["rebuild"],
        r["naive"],
        r["incremental"],
        r["rebuild_small"],
    )
    writes = r["writes"]
    floor = {"events": rebuild["events"], "seconds": ceiling["seconds"] + writes["seconds"]}
    rules = r["rules"]
    serial = {"events": rebuild["events"], "seconds": floor["seconds"] + rules["seconds"]}
    same = r["digest_rebuild"]["sha256"] == r["digest_incremental"]["sha256"]
    lines = [
        f"bench.fold ({args.db}{', quick' if args.quick else ''}) | {machine_line()}",
        f"log: {events:,} events, {donations:,} donations, {patients:,} patients (generated and loaded in {generation:.1f}s); {settings}",
        "",
        "| phase | events | seconds | events/s | peak RSS MB | ratio |",
        "|---|---:|---:|---:|---:|---|",
        f"| ceiling: raw DBAPI scan of the fold's event columns | {ceiling['events']:,} | {ceiling['seconds']:.2f} | {rate(ceiling):,.0f} | {ceiling['rss_mb']:.0f} | |",
        f"| write ceiling: the rebuild's {writes['rows']:,} rows ({writes['anomalies']:,} anomalies, {writes['donations']:,} donations, "
        f"{writes['credits']:,} credits) rewritten with the store's statements, one transaction | {rebuild['events']:,} | {writes['seconds']:.2f} | {rate({'events': rebuild['events'], 'seconds': writes['seconds']}):,.0f} | {writes['rss_mb']:.0f} | |",
        f"| storage floor: scan + writes, no Python fold at all | {floor['events']:,} | {floor['seconds']:.2f} | {rate(floor):,.0f} | | |",
        f"| rules: the fold's Python alone (fold_batch into rebuild --check's in-memory store, batch reads not timed) | {rules['events']:,} | {rules['seconds']:.2f} "
        f"| {rate(rules):,.0f} | {rules['rss_mb']:.0f} | |",
        f"| serial floor: storage floor + rules, one core | {serial['events']:,} | {serial['seconds']:.2f} | {rate(serial):,.0f} | | rebuild/serial floor {rate(rebuild) / rate(serial):.2f} |",
        f"| two-core bound: the serial floor split perfectly over both cores (arithmetic, not a run) | {serial['events']:,} | {serial['seconds'] / 2:.2f} "
        f"| {2 * rate(serial):,.0f} | | |",
        f"| naive: one ORM transaction per event (first {naive:,}) | {naive_r['events']:,} | {naive_r['seconds']:.2f} | {rate(naive_r):,.0f} | {naive_r['rss_mb']:.0f} | |",
        f"| **rebuild** (jobs.rebuild.rebuild, {rebuild['batches']} batches) | {rebuild['events']:,} | {rebuild['seconds']:.2f} | **{rate(rebuild):,.0f}** | {rebuild['rss_mb']:.0f} "
        f"| rebuild/ceiling {rate(rebuild) / rate(ceiling):.2f}; rebuild/storage floor {rate(rebuild) / rate(floor):.2f}; **rebuild/naive {rate(rebuild) / rate(naive_r):.1f}x** |",
        f"| incremental: reset + run_fold, batch {incremental['batch_size']:,}, payments log on ({incremental['batches']} batches) | {incremental['events']:,} | {incremental['seconds']:.2f} "
        f"| {rate(incremental):,.0f} | {incremental['rss_mb']:.0f} | incremental/naive {rate(incremental) / rate(naive_r):.1f}x |",
        f"| rebuild of a {small:,}-event log (RSS flatness) | {small_r['events']:,} | {small_r['seconds']:.2f} | {rate(small_r):,.0f} | {small_r['rss_mb']:.0f} "
        f"| RSS {events:,} / {small:,} events: {rebuild['rss_mb'] / small_r['rss_mb']:.2f} |",
        "",
        f"state after rebuild == state after incremental fold: {'yes' if same else 'NO'} "
        f"(donations {r['digest_rebuild']['statuses']}, {r['digest_rebuild']['credits']:,} credits, anomalies {r['digest_rebuild']['anomalies']})",
        f"state of the in-memory fold (rules) == state after rebuild: {'yes' if rules['sha256'] == r['digest_rebuild']['sha256'] else 'NO'}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

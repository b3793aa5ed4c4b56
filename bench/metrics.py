"""GET /metrics scrape time at two log sizes, side by side: the target is flat (ratio near 1).

Both sizes carry the same open work; only the log grows. The small size is bench.fold's generated log
(bulk inserts, then the fold). The large size is older history first, (LARGE - SMALL) events with every
donation settled, then exactly the small size's log as its recent traffic (donations and events renumbered
after the history, dated after it):

- history: bench.fold's generator, folded; each donation it leaves PENDING gets the poller's final answer
  (success or failure, as the generator's last polls), each one in REVIEW an operator decision, and a few
  late poll checks of completed donations make up the event count exactly; its unmatched callbacks stop
  waiting after fold.waiting_days, as in production (the recent traffic starts later than that);
- recent traffic: the small size's log, folded in the same batches, so the PENDING and REVIEW donations and
  the events waiting for a donation are the small size's own.

Each size also gets job_runs rows in proportion (one recorded fold per 5 events, as the scheduler leaves
under steady traffic). Then receiver.metrics.render, the scrape's whole work but HTTP, runs `--scrapes`
times, in this one process, on this one machine. "full count ms" is one COUNT of the log by source and
auth, what a scrape cost when it counted the log, for scale.

    python -m bench.metrics [--db sqlite|mysql] [--quick | --sizes SMALL,LARGE] [--scrapes N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import engine_for, fresh_mysql, fresh_sqlite, machine_line, mysql_url, table
from bench.fold import EVENT_INSERT_COLUMNS

SIZES = (10_000, 500_000)
QUICK_SIZES = (10_000, 100_000)
FOLD_RUNS_PER_EVENT = 1 / 5
EVENTS_PER_DONATION = 5
DONATIONS_PER_PATIENT = 40
FOLD_BATCH = 50_000
# history events kept free for the settling events (about 2% of its donations end open)
SETTLE_ROOM = 0.05
COLUMN = {name: position for position, name in enumerate(EVENT_INSERT_COLUMNS)}  # bench.fold's event rows
REFERENCE, TRANSACTION, CREATED = 10, 11, 12  # in bench.fold's donation rows


def _config(url: str, workdir: Path):
    from pipeline.config import load_config

    return load_config(
        None,
        environ={},
        overrides={
            "database.url": url,
            "logging.dir": str(workdir / "logs"),
            "receiver.spool_dir": str(workdir / "spool"),
            "privacy.key_file": str(workdir / "azamrecon.key"),
        },
    )


def _job_runs(engine, count: int, now: datetime) -> None:
    from sqlalchemy import insert

    from pipeline.models import JobRun

    rows = [
        dict(job="fold", started_at=now, finished_at=now, outcome="ok", counts="{}", host="bench") for _ in range(count)
    ]
    rows += [
        dict(job=job, started_at=now, finished_at=now, outcome="ok", counts="{}", host="bench")
        for job in ("poll", "spool")
    ]
    with engine.begin() as connection:
        for start in range(0, len(rows), 20_000):
            connection.execute(insert(JobRun.__table__), rows[start : start + 20_000])


def _recent(events: int, sqlite: bool):
    """The small size's log: the recent traffic of both sizes."""
    from bench.fold import generate

    donations = max(events // EVENTS_PER_DONATION, 1)
    return generate(events, donations, max(donations // DONATIONS_PER_PATIENT, 1), sqlite=sqlite)


def _moment(value) -> datetime:
    """A bench.fold storage time (text on SQLite, naive datetime on MariaDB) as a naive datetime."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _event(log, event_id: int, at: datetime, source: str, body: str, **values) -> tuple:
    from bench.fold import _row

    row = _row(source, body, **values)
    data = row[1].encode()
    return (event_id, log.when(at), row[0], data, hashlib.sha256(data).hexdigest(), *row[2:])


def _settle(engine, sqlite: bool, first_id: int, start: datetime, total: int):
    """Events that settle every open donation of the folded history, plus late poll checks of completed
    donations up to `total` events: a bench.fold Log holding only events, ids from `first_id`."""
    from bench.fold import POLL_ANSWER, Log

    log = Log(sqlite)
    rng = random.Random(7)
    with engine.connect() as connection:
        open_rows = connection.exec_driver_sql(
            "SELECT id, status, transaction_id, provider FROM donations WHERE status IN ('PENDING', 'REVIEW') ORDER BY id"
        ).all()
        spare = max(total - len(open_rows), 0)
        done = connection.exec_driver_sql(
            "SELECT id, 'COMPLETED', transaction_id, provider FROM donations "
            f"WHERE status = 'COMPLETED' AND transaction_id IS NOT NULL ORDER BY id LIMIT {spare}"
        ).all()
    at = start
    for donation, status, tid, provider in [*open_rows, *done]:
        event_id = first_id + len(log.events)
        at += timedelta(seconds=1 + rng.random() * 30)
        if status == "PENDING" and tid:  # the poller's final answer
            answer = "SUCCESS" if rng.random() < 0.7 else "FAILED"
        elif status == "COMPLETED":  # a late check that confirms
            answer = "SUCCESS"
        else:  # REVIEW, or PENDING with nothing to poll: an operator decides
            decision = "COMPLETED" if status == "REVIEW" else "FAILED"
            body = {"donation_id": donation, "status": decision, "note": "bench: checked with the payer"}
            body |= {"os_user": "bench", "sudo_user": None, "actor": None}
            log.events.append(
                _event(
                    log,
                    event_id,
                    at,
                    "operator",
                    json.dumps(body),
                    status=decision,
                    status_raw=decision,
                    donation_id=donation,
                )
            )
            continue
        text = answer.lower()
        log.events.append(
            _event(
                log,
                event_id,
                at,
                "poll",
                POLL_ANSWER % (text, tid),
                transaction_ref=tid,
                status_raw=text,
                status=answer,
                operator=provider,
                donation_id=donation,
            )
        )
    return log


def _renumbered(log, first_event: int, first_donation: int, later: timedelta):
    """`log` (the recent traffic) after the history: event and donation ids offset, every time `later`, and the
    references and transaction ids that name a donation rewritten with its new id (bodies and columns)."""
    ours = first_donation - 1
    references: dict[str, str] = {}
    transactions: dict[str, str] = {}
    donations = []
    for row in log.donations:
        row = list(row)
        created = _moment(row[CREATED]) + later
        donation = row[0] + ours
        references[row[REFERENCE]] = new_reference = f"RHCI-DN-{donation}-{created:%Y%m%d%H%M%S}"
        if row[TRANSACTION]:
            transactions[row[TRANSACTION]] = f"{row[TRANSACTION].split('-')[0]}-{donation:08x}-azam"
        row[0], row[REFERENCE], row[TRANSACTION], row[CREATED] = (
            donation,
            new_reference,
            transactions.get(row[TRANSACTION]),
            log.when(created),
        )
        donations.append(tuple(row))
    events = []
    for row in log.events:
        row = list(row)
        body = row[COLUMN["body"]]
        for column, names in (
            ("utilityref", references),
            ("externalreference", transactions),
            ("transaction_ref", transactions),
        ):
            old = row[COLUMN[column]]
            if old in names:
                body = body.replace(old.encode(), names[old].encode())
                row[COLUMN[column]] = names[old]
        if row[COLUMN["donation_id"]] is not None:
            row[COLUMN["donation_id"]] += ours
        row[COLUMN["id"]] += first_event - 1
        row[COLUMN["received_at"]] = log.when(_moment(row[COLUMN["received_at"]]) + later)
        row[COLUMN["body"]], row[COLUMN["body_sha256"]] = body, hashlib.sha256(body).hexdigest()
        events.append(tuple(row))
    log.patients, log.donations, log.events = [], donations, events  # the history's patients include these
    return log


def _build(url: str, db: str, events: int, small: int, config, now: datetime) -> None:
    """Load and fold the log of `events` events whose recent traffic is the `small` size's log."""
    from bench.fold import generate, load
    from jobs.fold import run_fold

    sqlite = db == "sqlite"
    engine = engine_for(url)
    try:
        recent = _recent(small, sqlite)
        older = events - small
        if older > 0:
            donations = max(older // EVENTS_PER_DONATION, 1)
            patients = max(events // EVENTS_PER_DONATION // DONATIONS_PER_PATIENT, 1)
            room = min(int(donations * SETTLE_ROOM) + 10, older - 1)
            history = generate(older - room, donations, patients, sqlite=sqlite)
            load(url, history)
            run_fold(engine, config, now, batch_size=FOLD_BATCH, announce=False)
            ended = _moment(history.events[-1][COLUMN["received_at"]])
            settling = _settle(engine, sqlite, len(history.events) + 1, ended + timedelta(days=1), room)
            load(url, settling)
            run_fold(engine, config, now, batch_size=FOLD_BATCH, announce=False)
            settled = _moment(settling.events[-1][COLUMN["received_at"]]) if settling.events else ended
            first = _moment(recent.events[0][COLUMN["received_at"]])
            later = timedelta(days=(settled - first).days + int(config.fold.waiting_days) + 2)
            recent = _renumbered(recent, len(history.events) + len(settling.events) + 1, donations + 1, later)
        load(url, recent)
        run_fold(engine, config, now, batch_size=FOLD_BATCH, announce=False)
    finally:
        engine.dispose()


def measure(db: str, events: int, small: int, workdir: Path, scrapes: int) -> dict:
    from sqlalchemy import event as sa_event

    from receiver.metrics import render

    directory = workdir / str(events)
    directory.mkdir(parents=True, exist_ok=True)
    url = (
        fresh_sqlite(directory)
        if db == "sqlite"
        else fresh_mysql(mysql_url().rsplit("/", 1)[0] + "/azamrecon_benchmetrics")
    )
    started = time.perf_counter()
    config = _config(url, directory)
    now = datetime.now(UTC)
    _build(url, db, events, small, config, now)
    engine = engine_for(url)
    try:
        _job_runs(engine, int(events * FOLD_RUNS_PER_EVENT), now)
        prepared = time.perf_counter() - started
        statements: list[str] = []
        listener = lambda *args: statements.append(args[2])  # noqa: E731
        render(engine, config, None, now)  # warm: connection pool, statement caches
        sa_event.listen(engine, "before_cursor_execute", listener)
        render(engine, config, None, now)
        sa_event.remove(engine, "before_cursor_execute", listener)
        times = []
        for _ in range(scrapes):
            begin = time.perf_counter()
            render(engine, config, None, now)
            times.append((time.perf_counter() - begin) * 1000)
        begin = time.perf_counter()
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT source, auth, COUNT(*) FROM payment_events GROUP BY source, auth").all()
            full_count = (time.perf_counter() - begin) * 1000
            logged = connection.exec_driver_sql("SELECT COUNT(*) FROM payment_events").scalar()
            donations = connection.exec_driver_sql("SELECT COUNT(*) FROM donations").scalar()
            open_by_status = dict.fromkeys(("PENDING", "REVIEW"), 0) | dict(
                connection.exec_driver_sql(
                    "SELECT status, COUNT(*) FROM donations WHERE status IN ('PENDING', 'REVIEW') GROUP BY status"
                ).all()
            )
            waiting = connection.exec_driver_sql("SELECT COUNT(DISTINCT event_id) FROM waiting_keys").scalar()
            job_runs = connection.exec_driver_sql("SELECT COUNT(*) FROM job_runs").scalar()
    finally:
        engine.dispose()
    times.sort()
    return {
        "events": logged,
        "donations": donations,
        "job_runs": job_runs,
        "statements": len(statements),
        "p50": statistics.median(times),
        "p99": times[min(len(times) - 1, int(len(times) * 0.99))],
        "full_count": full_count,
        "open": sum(open_by_status.values()),
        "open_by_status": open_by_status,
        "waiting": waiting,
        "prepared": prepared,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "mysql"), default="sqlite")
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES[0]:,} and {QUICK_SIZES[1]:,}")
    parser.add_argument("--sizes", help="two log sizes, SMALL,LARGE, LARGE > SMALL (overrides --quick)")
    parser.add_argument("--scrapes", type=int, default=50, help="scrapes timed at each size (default 50)")
    args = parser.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else SIZES
    if args.sizes:
        try:
            sizes = tuple(int(size) for size in args.sizes.split(","))
        except ValueError:
            sizes = ()
        if len(sizes) != 2 or min(sizes) < 1 or sizes[1] <= sizes[0]:
            parser.error(f"--sizes: two positive numbers SMALL,LARGE with LARGE > SMALL, got {args.sizes!r}")
    from pipeline.logs import configure_logging

    with tempfile.TemporaryDirectory(prefix="azamrecon-bench-metrics-") as workdir:
        configure_logging(_config("sqlite://", Path(workdir)).logging, component="bench", stderr_level="WARNING")
        small, large = (measure(args.db, size, sizes[0], Path(workdir), args.scrapes) for size in sizes)
    print(machine_line())
    print(f"/metrics scrape (receiver.metrics.render, {args.scrapes} scrapes per size), {args.db}")
    print()
    print(
        table(
            [
                "db",
                "events",
                "donations",
                "open",
                "waiting",
                "job_runs",
                "statements",
                "p50 ms",
                "p99 ms",
                "full count ms",
                "setup s",
            ],
            [
                [
                    args.db,
                    r["events"],
                    r["donations"],
                    r["open"],
                    r["waiting"],
                    r["job_runs"],
                    r["statements"],
                    r["p50"],
                    r["p99"],
                    r["full_count"],
                    r["prepared"],
                ]
                for r in (small, large)
            ],
        )
    )
    same = small["open_by_status"] == large["open_by_status"] and small["waiting"] == large["waiting"]
    ratio = large["p50"] / small["p50"]
    print()
    print(
        "open work at both sizes: "
        + ", ".join(
            f"{status} {count:,} / {large['open_by_status'][status]:,}"
            for status, count in small["open_by_status"].items()
        )
        + f", waiting {small['waiting']:,} / {large['waiting']:,}: "
        + ("equal" if same else "NOT EQUAL")
    )
    print(f"ratio p50 {large['events']:,} / {small['events']:,} events: {ratio:.2f}x (target: flat, near 1)")
    print(
        f"ratio full count {large['events']:,} / {small['events']:,} events: {large['full_count'] / small['full_count']:.2f}x"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

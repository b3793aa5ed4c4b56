"""GET /metrics scrape time at two log sizes, side by side: the target is flat (ratio near 1).

Each size gets a fresh database with a realistic folded log (bench.fold's generator, bulk inserts, then the
fold) and job_runs rows in proportion (one recorded fold per 5 events, as the scheduler leaves under steady
traffic). Then receiver.metrics.render, the scrape's whole work but HTTP, runs `--scrapes` times, in this one
process, on this one machine. "full count ms" is one COUNT of the log by source and auth, what a scrape cost
when it counted the log, for scale.

    python -m bench.metrics [--db sqlite|mysql] [--quick | --sizes SMALL,LARGE] [--scrapes N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.common import engine_for, fresh_mysql, fresh_sqlite, machine_line, mysql_url, table

SIZES = (10_000, 500_000)
QUICK_SIZES = (10_000, 100_000)
FOLD_RUNS_PER_EVENT = 1 / 5


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


def measure(db: str, events: int, workdir: Path, scrapes: int) -> dict:
    from sqlalchemy import event as sa_event

    from bench.fold import generate, load
    from jobs.fold import run_fold
    from receiver.metrics import render

    directory = workdir / str(events)
    directory.mkdir(parents=True, exist_ok=True)
    url = (
        fresh_sqlite(directory)
        if db == "sqlite"
        else fresh_mysql(mysql_url().rsplit("/", 1)[0] + "/azamrecon_benchmetrics")
    )
    donations = max(events // 5, 1)
    started = time.perf_counter()
    load(url, generate(events, donations, max(donations // 40, 1), sqlite=db == "sqlite"))
    config = _config(url, directory)
    engine = engine_for(url)
    now = datetime.now(UTC)
    try:
        run_fold(engine, config, now, batch_size=50_000, announce=False)
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
            open_donations = connection.exec_driver_sql(
                "SELECT COUNT(*) FROM donations WHERE status IN ('PENDING', 'REVIEW')"
            ).scalar()
            waiting = connection.exec_driver_sql("SELECT COUNT(DISTINCT event_id) FROM waiting_keys").scalar()
    finally:
        engine.dispose()
    times.sort()
    return {
        "events": events,
        "donations": donations,
        "job_runs": int(events * FOLD_RUNS_PER_EVENT) + 2,
        "statements": len(statements),
        "p50": statistics.median(times),
        "p99": times[min(len(times) - 1, int(len(times) * 0.99))],
        "full_count": full_count,
        "open": open_donations,
        "waiting": waiting,
        "prepared": prepared,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "mysql"), default="sqlite")
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES[0]:,} and {QUICK_SIZES[1]:,}")
    parser.add_argument("--sizes", help="two log sizes, SMALL,LARGE (overrides --quick)")
    parser.add_argument("--scrapes", type=int, default=50, help="scrapes timed at each size (default 50)")
    args = parser.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else SIZES
    if args.sizes:
        try:
            sizes = tuple(int(size) for size in args.sizes.split(","))
        except ValueError:
            sizes = ()
        if len(sizes) != 2 or min(sizes) < 1:
            parser.error(f"--sizes: two positive numbers SMALL,LARGE, got {args.sizes!r}")
    from pipeline.logs import configure_logging

    with tempfile.TemporaryDirectory(prefix="azamrecon-bench-metrics-") as workdir:
        configure_logging(_config("sqlite://", Path(workdir)).logging, component="bench", stderr_level="WARNING")
        small, large = (measure(args.db, size, Path(workdir), args.scrapes) for size in sizes)
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
    ratio = large["p50"] / small["p50"]
    print()
    print(f"ratio p50 {large['events']:,} / {small['events']:,} events: {ratio:.2f}x (target: flat, near 1)")
    print(
        f"ratio full count {large['events']:,} / {small['events']:,} events: {large['full_count'] / small['full_count']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

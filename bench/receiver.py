"""Receiver throughput: durable callbacks/s and latency of a real `azamrecon serve`, against its ceilings.

    python -m bench.receiver [--quick] [--db sqlite|mysql|both] [--driver auto|python|wrk] [--workers N]

In one run, on this machine, at 1, 8 and 64 connections (closed loop, fixed duration):
  receiver   `azamrecon serve` (subprocess, config file in a temp dir), default settings (group commit)
  naive      the same server with receiver.group_commit_max_batch=1: one transaction per request
  no-op      a no-op ASGI app under the same uvicorn settings and load generator: the HTTP ceiling
  storage    INSERT one payment_events row + COMMIT in a loop for a fixed time (same durability
             settings: SQLite WAL + synchronous=FULL, MariaDB as configured): the storage ceiling
Every POST is a realistic callback for a known donation (utilityref varies over the seeded donations;
transaction references are unique). "receiver/s" counts 2xx answers per second: each is sent only after
its row is committed (group commit), so it is the durable rate. Afterwards the database must hold
exactly one row per answer. With the Python load generator (separate process, asyncio + raw sockets,
keep-alive), which stops sending at the deadline and waits for every answer, that is exact. wrk
(--driver wrk, the default when installed: it uses far less CPU on a 2-core machine) abandons the
requests in flight when it stops; the server stores those too, so there "cut" = db rows - answers,
between 0 and the number of connections.

MariaDB: AZAMRECON_BENCH_MYSQL_URL (default mysql+pymysql://root@127.0.0.1:3306/azamrecon_bench),
dropped and created fresh. Exit status 1 when a row-count invariant fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import common
from bench.common import LoadResult, ratio, table

TARGETS = {"sqlite": 4000, "mysql": 3000}
TARGET_P99_MS = 25.0


@dataclass
class Run:
    load: LoadResult
    rows: int | None = None  # rows the database gained during the run
    cpu_us: float | None = None  # server CPU per answered request

    @property
    def answered(self) -> int:
        return sum(self.load.statuses.values())

    @property
    def consistent(self) -> bool:
        """Every answered request is in the database, and nothing else is, except (wrk only) the requests
        cut in flight when wrk stopped: at most one per connection, stored although never answered."""
        if self.rows is None:
            return True
        if self.load.driver == "python":
            return self.rows == self.answered and self.load.cut == 0
        return self.answered <= self.rows <= self.answered + self.load.connections


def _measure(
    server, port: int, connections: int, seconds: float, references, tag: str, driver: str, workdir: Path, engine=None
) -> Run:
    # warm-up (bounded): connections opened, caches and the writer thread warm; its rows are not counted
    common.run_load(
        port,
        connections=connections,
        seconds=min(0.5, seconds / 4),
        max_requests=2000,
        references=references,
        tag=tag + "w",
        driver="python",
    )
    before = common.settle_count(engine) if engine is not None else None
    cpu0 = server.cpu_seconds()
    load = common.run_load(
        port, connections=connections, seconds=seconds, references=references, tag=tag, driver=driver, workdir=workdir
    )
    cpu = server.cpu_seconds() - cpu0
    rows = common.settle_count(engine) - before if engine is not None else None
    answered = sum(load.statuses.values())
    if load.driver == "wrk":  # wrk does not wait for answers in flight at its stop: the database tells how many
        load.cut = rows - answered if rows is not None else 0
    return Run(load, rows, cpu / answered * 1e6 if answered else None)


def _log_file_mb(url: str) -> float:
    """The -wal file's size: the longest the write-ahead log has been (a log that starts over is written
    from the file's start again); read while the server still has the database open."""
    path = Path(url.replace("sqlite:///", "", 1) + "-wal")
    return path.stat().st_size / 1e6 if path.exists() else 0.0


def run(args) -> int:
    quick = args.quick
    seconds = args.seconds or (1.5 if quick else 8.0)
    ceiling_seconds = 1.0 if quick else 2.0
    connections = [int(c) for c in args.connections.split(",")]
    driver = args.driver
    if driver == "auto":
        driver = "wrk" if common.wrk_available() else "python"
    elif driver == "wrk" and not common.wrk_available():
        print("error: --driver wrk but wrk is not installed", file=sys.stderr)
        return 2
    dbs = ["sqlite", "mysql"] if args.db == "both" else [args.db]
    notes: list[str] = []
    if "mysql" in dbs:
        reason = common.mysql_reachable()
        if reason:
            if args.db == "mysql":
                print(f"error: MariaDB not reachable at {common.mysql_url()}: {reason}", file=sys.stderr)
                return 2
            dbs.remove("mysql")
            notes.append(f"mysql skipped: not reachable ({reason})")
    references = [common.donation_reference(i) for i in range(1, args.donations + 1)]
    workers = args.workers

    results: dict[tuple[str, str, int], Run] = {}
    longest_log_mb: float | None = None
    ceilings: dict[str, dict] = {}
    failures: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="azamrecon-bench-") as tmp:
        tmp_path = Path(tmp)
        # the HTTP ceiling (no database)
        with common.noop_process(tmp_path / "noop", workers=workers or 1).start() as noop:
            for c in connections:
                results[("-", "noop", c)] = _measure(
                    noop, noop.port, c, seconds, references, f"n{c}-", driver, tmp_path
                )
        for db in dbs:
            directory = tmp_path / db
            directory.mkdir()
            url = common.fresh_sqlite(directory) if db == "sqlite" else common.fresh_mysql()
            common.seed_donations(url, args.donations)
            ceilings[db] = common.storage_ceiling(url, ceiling_seconds)
            engine = common.engine_for(url)
            try:
                for variant, batch in (("receiver", None), ("naive", 1)):
                    settings = {
                        "database.url": url,
                        "logging.dir": str(directory / f"logs-{variant}"),
                        "receiver.spool_dir": str(directory / f"spool-{variant}"),
                    }
                    if batch is not None:
                        settings["receiver.group_commit_max_batch"] = batch
                    config = common.write_config(directory / f"{variant}.yaml", settings)
                    with common.serve_process(
                        config, directory / f"proc-{variant}", workers=workers, name=variant
                    ).start() as server:
                        for c in connections:
                            result = _measure(
                                server,
                                server.port,
                                c,
                                seconds,
                                references,
                                f"{db[0]}{variant[0]}{c}-",
                                driver,
                                tmp_path,
                                engine,
                            )
                            results[(db, variant, c)] = result
                            if not result.consistent:
                                failures.append(
                                    f"{db} {variant} c={c} ({result.load.driver}): database gained {result.rows} rows for {result.answered} answers "
                                    f"({result.load.ok} 2xx), {result.load.cut} cut in flight"
                                )
                        if db == "sqlite" and variant == "receiver":
                            longest_log_mb = _log_file_mb(url)
            finally:
                engine.dispose()
            if url.startswith("mysql") and not args.keep_mysql:
                pass  # left in place for inspection; recreated fresh on the next run

    elapsed = time.monotonic() - started
    mode = "quick" if quick else "full"
    print(
        f"bench.receiver ({mode}, {seconds:g} s per point, driver={driver}, serve --workers {workers or 'default (receiver.workers=1)'}) | {common.machine_line()}"
    )
    headers = [
        "db",
        "conns",
        "receiver/s",
        "p50 ms",
        "p99 ms",
        "2xx",
        "db rows",
        "cut",
        "srv CPU us/req",
        "no-op/s",
        "naive/s",
        "naive p99 ms",
        "storage/s",
        "rcv/no-op",
        "rcv/naive",
        "rcv/storage",
    ]
    rows = []
    for db in dbs:
        for c in connections:
            r = results[(db, "receiver", c)]
            n = results[(db, "naive", c)]
            h = results[("-", "noop", c)]
            ceiling = ceilings[db]["rate"]
            rows.append(
                [
                    db,
                    c,
                    r.load.rate,
                    r.load.p50_ms,
                    r.load.p99_ms,
                    r.load.ok,
                    r.rows,
                    r.load.cut,
                    r.cpu_us,
                    h.load.rate,
                    n.load.rate,
                    n.load.p99_ms,
                    ceiling,
                    ratio(r.load.rate, h.load.rate),
                    ratio(r.load.rate, n.load.rate),
                    ratio(r.load.rate, ceiling),
                ]
            )
    print(table(headers, rows))
    for db in dbs:
        top = results[(db, "receiver", max(connections))]
        goal = TARGETS[db]
        rate_ok = top.load.rate >= goal
        p99_ok = top.load.p99_ms <= TARGET_P99_MS
        print(
            f"target {db} @{max(connections)} conns: >= {goal:,}/s {'MET' if rate_ok else 'NOT MET'} ({top.load.rate:,.0f}/s); "
            f"p99 <= {TARGET_P99_MS:g} ms {'MET' if p99_ok else 'NOT MET'} ({top.load.p99_ms:.1f} ms)"
            + (" [quick run: indicative only]" if quick else "")
        )
    for db in dbs:
        ceiling = ceilings[db]
        print(f"storage ceiling {db}: {ceiling['rows']:,} single-row INSERT+COMMIT in {ceiling['seconds']:.2f} s")
    if longest_log_mb is not None:
        print(
            f"sqlite write-ahead log: {longest_log_mb:.1f} MB at its longest during the receiver's points (the -wal file; SQLite never shrinks it here)"
        )
    for note in notes:
        print(f"note: {note}")
    rule = (
        "db rows == answers (all 2xx)"
        if driver == "python"
        else "answers <= db rows <= answers + connections (cut: in flight when wrk stopped; stored, never answered)"
    )
    print(f"invariant {rule}: {'OK' if not failures else 'FAILED'}; total {elapsed:.0f} s")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short points (finishes in under a minute)")
    parser.add_argument(
        "--db", choices=["sqlite", "mysql", "both"], default="both", help="both skips MariaDB when unreachable"
    )
    parser.add_argument("--driver", choices=["auto", "python", "wrk"], default="auto", help="auto: wrk when installed")
    parser.add_argument("--connections", default="1,8,64")
    parser.add_argument("--seconds", type=float, default=None, help="duration of each point (default 8, quick 1.5)")
    parser.add_argument("--workers", type=int, default=None, help="serve --workers (default: the config default)")
    parser.add_argument("--donations", type=int, default=2000, help="known donations the callbacks name")
    parser.add_argument("--keep-mysql", action="store_true", help=argparse.SUPPRESS)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

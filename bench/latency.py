"""Callback-to-COMPLETED latency with the default `serve` + `scheduler` settings, on SQLite.

    python -m bench.latency [--quick] [--rate 20] [--seconds 30] [--waiting 0,300000]

Starts `azamrecon serve` and `azamrecon scheduler` as subprocesses (config file in a temp dir: only the
database, logs, spool and, so nothing leaves the machine, AzamPay URLs on a dead loopback port; every
timing setting is the default: scheduler.fold_interval_seconds, fold.batch_size, receiver.*). Seeds
PENDING donations, posts one success callback per donation at a steady rate (paced, one connection),
and polls the database every 10 ms for donations that read COMPLETED. Latency is from the start of
the callback's POST to the first poll that sees COMPLETED (so it includes up to 10 ms of polling
granularity). Target: p99 <= 2 s.

--waiting N,M,...: one run per value, side by side, with that many unmatched callbacks waiting (folded
as unknown_reference before serve and scheduler start), each donation created just before its callback
(as a checkout would), so every fold offers new donations to the waiting events. It prints the callback
answer p99 and the callback -> COMPLETED p99 per value, and each as a ratio of the first value's
(target: within 1.5x).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from datetime import UTC
from pathlib import Path

from bench import common
from bench.common import table

TARGET_P99_S = 2.0
POLL_EVERY = 0.01
WAITING_RATIO = 1.5  # callback p99 and callback -> COMPLETED with events waiting vs none (hostile traffic, fault 6)


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def run(args) -> int:
    waits = [int(part) for part in args.waiting.split(",")] if args.waiting else [None]
    results = [run_once(args, waiting) for waiting in waits]
    if args.waiting:
        base = results[0]
        rows = []
        for waiting, result in zip(waits, results, strict=True):
            ratio_answer = result["answer_p99"] / base["answer_p99"] if base["answer_p99"] else None
            ratio_complete = result["p99"] / base["p99"] if base["p99"] else None
            rows.append(
                [
                    f"{waiting:,}",
                    result["posted"],
                    result["completed"],
                    result["answer_p99"] * 1000,
                    result["p99"] * 1000,
                    f"{ratio_answer:.2f}x" if ratio_answer else "-",
                    f"{ratio_complete:.2f}x" if ratio_complete else "-",
                    "MET"
                    if (ratio_answer or 0) <= WAITING_RATIO and (ratio_complete or 0) <= WAITING_RATIO
                    else "NOT MET",
                ]
            )
        print(f"bench.latency --waiting: side by side, donations created during the run | {common.machine_line()}")
        print(
            table(
                [
                    "unmatched waiting",
                    "callbacks",
                    "COMPLETED",
                    "answer p99 ms",
                    "COMPLETED p99 ms",
                    "answer / first",
                    "COMPLETED / first",
                    f"within {WAITING_RATIO}x",
                ],
                rows,
            )
        )
    return 1 if any(result["missing"] for result in results) else 0


def fill_waiting(url: str, count: int) -> None:
    """`count` callbacks naming no donation, folded once so they wait (unknown_reference, waiting_keys)."""
    from datetime import datetime

    from jobs.fold import run_fold
    from pipeline.config import Config
    from pipeline.db import transaction
    from pipeline.events import extract_fields
    from pipeline.store.events import append_events, event_row

    engine = common.engine_for(url)
    now = datetime.now(UTC)
    try:
        for start in range(0, count, 20_000):
            rows = []
            for n in range(start, min(count, start + 20_000)):
                body = common.callback_body(f"RHCI-DN-{9_000_000 + n}-{common.REFERENCE_STAMP}", f"wait{n:08d}")
                rows.append(
                    event_row(source="callback", body=body, received_at=now, auth="n/a", fields=extract_fields(body))
                )
            with transaction(engine) as session:
                append_events(session, rows)
        config = Config().model_copy(update={"database": common.database_config(url)})
        run_fold(engine, config, now, batch_size=50_000, announce=False)
    finally:
        engine.dispose()


def run_once(args, waiting: int | None) -> dict:
    import httpx
    from sqlalchemy import text

    from pipeline.config import Config

    defaults = Config()
    rate = args.rate
    seconds = args.seconds or (6.0 if args.quick else 30.0)
    count = max(1, int(rate * seconds))
    started_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="azamrecon-latency-") as tmp:
        tmp_path = Path(tmp)
        url = common.fresh_sqlite(tmp_path)
        if waiting is None:
            # donations created "now": younger than poll.threshold_minutes, so the poll job leaves them alone
            common.seed_donations(url, count, created_now=True)
        elif waiting:
            fill_waiting(url, waiting)
        dead = f"http://127.0.0.1:{common.free_port()}"
        config = common.write_config(
            tmp_path / "config.yaml",
            {
                "database.url": url,
                "logging.dir": str(tmp_path / "logs"),
                "receiver.spool_dir": str(tmp_path / "spool"),
                "azampay.auth_url": dead,
                "azampay.checkout_url": dead,
            },
        )
        engine = common.engine_for(url)
        posted: dict[int, float] = {}
        answered: dict[int, float] = {}
        completed: dict[int, float] = {}
        statuses: dict[int, int] = {}
        stop = threading.Event()

        def watch() -> None:
            query = text("SELECT id FROM donations WHERE status = 'COMPLETED'")
            while not stop.is_set():
                with engine.connect() as connection:
                    ids = [row[0] for row in connection.execute(query)]
                seen = time.perf_counter()
                for donation_id in ids:
                    completed.setdefault(donation_id, seen)
                stop.wait(POLL_EVERY)

        serve = common.serve_process(config, tmp_path / "proc", name="serve")
        scheduler = common.Process(
            [sys.executable, "-m", "jobs.cli", "scheduler", "--config", str(config)], tmp_path / "proc", "scheduler"
        )
        try:
            serve.start()
            scheduler.start()
            time.sleep(1.0)  # the scheduler's first fold tick
            if not scheduler.alive():
                raise RuntimeError(f"scheduler exited:\n{scheduler.output()[-3000:]}")
            watcher = threading.Thread(target=watch, name="watch", daemon=True)
            watcher.start()
            with httpx.Client(timeout=10.0) as client:
                begin = time.perf_counter()
                for i in range(1, count + 1):
                    due = begin + (i - 1) / rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    if waiting is not None:  # the donation appears just before its callback, as after a checkout
                        create_donation(engine, i)
                    body = common.callback_body(common.donation_reference(i), f"lat{i:07d}")
                    posted[i] = time.perf_counter()
                    answer = client.post(
                        serve.url + common.CALLBACK_PATH, content=body, headers={"content-type": "application/json"}
                    )
                    answered[i] = time.perf_counter() - posted[i]
                    statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
                    if time.perf_counter() - begin > seconds * 3 + 30:  # bounded even if the server crawls
                        break
            deadline = time.perf_counter() + 15.0
            while len(completed) < len(posted) and time.perf_counter() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            scheduler.stop()
            serve.stop()
            engine.dispose()
    latencies = [completed[i] - posted[i] for i in posted if i in completed]
    missing = len(posted) - len(latencies)
    p50, p90, p99 = (_pct(latencies, p) for p in (50, 90, 99))
    answer_p99 = _pct(list(answered.values()), 99)
    worst = max(latencies) if latencies else None
    met = p99 is not None and p99 <= TARGET_P99_S and missing == 0
    mode = "quick" if args.quick else "full"
    if waiting is not None:
        mode += f", {waiting:,} unmatched waiting"
    print(
        f"bench.latency ({mode}: {len(posted)} callbacks at {rate:g}/s; serve --workers {defaults.receiver.workers}, "
        f"scheduler.fold_interval_seconds={defaults.scheduler.fold_interval_seconds:g} (defaults); SQLite synchronous="
        f"{defaults.database.sqlite_synchronous}) | {common.machine_line()}"
    )
    print(
        table(
            [
                "db",
                "callbacks",
                "2xx",
                "COMPLETED",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                "target p99",
                "p99/target",
                "result",
            ],
            [
                [
                    "sqlite",
                    len(posted),
                    sum(n for s, n in statuses.items() if 200 <= s < 300),
                    len(latencies),
                    *(None if v is None else v * 1000 for v in (p50, p90, p99, worst)),
                    f"{TARGET_P99_S * 1000:.0f} ms",
                    f"{p99 / TARGET_P99_S:.2f}x" if p99 is not None else "-",
                    "MET" if met else "NOT MET",
                ]
            ],
        )
    )
    print(
        f"polling granularity {POLL_EVERY * 1000:.0f} ms; callback answer p99 {answer_p99 * 1000 if answer_p99 else 0:.1f} ms; "
        f"statuses {dict(sorted(statuses.items()))}; total {time.monotonic() - started_all:.0f} s"
    )
    if missing:
        print(f"FAILED: {missing} donation(s) not COMPLETED within 15 s of the last callback")
    return {
        "posted": len(posted),
        "completed": len(latencies),
        "missing": missing,
        "p99": p99 or 0.0,
        "answer_p99": answer_p99 or 0.0,
    }


def create_donation(engine, donation_id: int) -> None:
    from datetime import datetime

    from sqlalchemy import insert

    from pipeline.models import Donation

    with engine.begin() as connection:
        connection.execute(
            insert(Donation.__table__),
            [
                dict(
                    id=donation_id,
                    amount=common.DONATION_AMOUNT,
                    currency="TZS",
                    patient_amount=common.DONATION_AMOUNT,
                    support_amount=0,
                    charge_amount=common.DONATION_AMOUNT,
                    charge_currency="TZS",
                    msisdn="255628630936",
                    provider="Halopesa",
                    external_reference=common.donation_reference(donation_id),
                    created_at=datetime.now(UTC),
                    status="PENDING",
                )
            ],
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 s of callbacks (finishes in under a minute)")
    parser.add_argument("--rate", type=float, default=20.0, help="callbacks per second (default 20)")
    parser.add_argument("--seconds", type=float, default=None, help="how long to post (default 30, quick 6)")
    parser.add_argument(
        "--waiting",
        default=None,
        metavar="N,M",
        help="side by side: runs with N, M, ... unmatched events waiting (e.g. 0,300000)",
    )
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

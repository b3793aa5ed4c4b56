"""Poll benchmark: `python -m bench.poll [--quick] [--db sqlite|mysql] [--donations N]`.

N stuck PENDING donations (default 10,000), each with a transaction seeded in an in-process sandbox on
127.0.0.1 (SandboxHandle.seed_transaction, a mix of outcomes), are checked by one jobs.poll.run_poll at
the configured concurrency (poll.concurrency, 8 by default). Reported: total time, status calls/s and
events appended, against the target (10,000 in <= 30 s); then one fold of the answers.
The run is bounded: one run_poll over a fixed candidate list.

The sandbox runs in its own process by default (`--sandbox process`): AzamPay is a remote server, and
in a thread of the poller's process the sandbox's stdlib HTTP server took most of the process's CPU and
its GIL, so the figure measured the simulator more than the poller. `--sandbox thread` keeps the old
in-process arrangement. Either way the table reports the poller's own CPU per call, and the sandbox's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from bench.common import fresh_mysql, fresh_sqlite, machine_line, mysql_reachable

DEFAULT_MYSQL_BENCH = "mysql+pymysql://root@127.0.0.1:3306/azamrecon_benchpoll_run"
OUTCOMES = ("success",) * 7 + ("failure", "pending", "no_callback")


class _ThreadSandbox:
    """The sandbox in a thread of this process (sandbox.testing.running_sandbox)."""

    def __init__(self, handle):
        self.handle, self.url, self.settings = handle, handle.url, handle.settings

    def seed(self, transactions: list[dict]) -> list[str]:
        return [
            self.handle.seed_transaction(t["externalId"], t["msisdn"], t["provider"], t["amount"], outcome=t["outcome"])
            for t in transactions
        ]

    def status_calls(self) -> int:
        return self.handle.stats().get("status_calls", 0)

    def cpu_seconds(self) -> float | None:
        return None  # inside this process's own figure


class _ProcessSandbox:
    """`azamrecon sandbox` in its own process, seeded and read through its /_sandbox/ endpoints."""

    def __init__(self, process, url: str):
        from sandbox.settings import SandboxSettings

        self.process, self.url, self.settings = process, url, SandboxSettings()  # the CLI's defaults

    def seed(self, transactions: list[dict]) -> list[str]:
        import requests

        ids: list[str] = []
        with requests.Session() as session:
            for start in range(0, len(transactions), 2_000):
                answer = session.post(
                    f"{self.url}/_sandbox/transactions", json=transactions[start : start + 2_000], timeout=60
                )
                answer.raise_for_status()
                ids.extend(t["transaction_id"] for t in answer.json())
        return ids

    def status_calls(self) -> int:
        import requests

        return requests.get(f"{self.url}/_sandbox/stats", timeout=10).json().get("status_calls", 0)

    def cpu_seconds(self) -> float | None:
        return self.process.cpu_seconds()


@contextmanager
def sandbox_for(mode: str, workdir: Path) -> Iterator[_ThreadSandbox | _ProcessSandbox]:
    if mode == "thread":
        from sandbox.testing import running_sandbox

        with running_sandbox() as handle:
            yield _ThreadSandbox(handle)
        return
    from bench.common import Process
    from sandbox.testing import free_port, wait_healthy

    port = free_port()
    with Process(
        [sys.executable, "-m", "jobs.cli", "sandbox", "--port", str(port)], workdir / "sandbox", "sandbox"
    ).start() as process:
        url = f"http://127.0.0.1:{port}"
        problem = wait_healthy(url, process.process, 30, require_healthy=False)  # any answer: it has no /healthz
        if problem:
            raise SystemExit(f"sandbox {problem}:\n{process.output()[-2000:]}")
        yield _ProcessSandbox(process, url)


def seed(url: str, sandbox, count: int, created_at: datetime) -> None:
    from sqlalchemy import insert

    from bench.common import engine_for
    from pipeline.models import Donation

    references = [f"RHCI-DN-{donation_id}-{created_at:%Y%m%d%H%M%S}" for donation_id in range(1, count + 1)]
    transaction_ids = sandbox.seed(
        [
            {
                "externalId": reference,
                "msisdn": "255758285812",
                "provider": "Mpesa",
                "amount": "1000",
                "outcome": OUTCOMES[donation_id % len(OUTCOMES)],
            }
            for donation_id, reference in enumerate(references, 1)
        ]
    )
    rows = []
    for donation_id, reference, transaction_id in zip(range(1, count + 1), references, transaction_ids, strict=True):
        rows.append(
            dict(
                id=donation_id,
                patient_id=None,
                amount=Decimal("1000"),
                currency="TZS",
                patient_amount=Decimal("1000"),
                support_amount=Decimal("0"),
                charge_amount=Decimal("1000"),
                charge_currency="TZS",
                msisdn="255758285812",
                provider="Mpesa",
                external_reference=reference,
                transaction_id=transaction_id,
                created_at=created_at,
                status="PENDING",
            )
        )
    engine = engine_for(url)
    try:
        with engine.begin() as connection:
            for start in range(0, len(rows), 2_000):
                connection.execute(insert(Donation.__table__), rows[start : start + 2_000])
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.poll", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "mysql"), default="sqlite")
    parser.add_argument("--quick", action="store_true", help="1,000 donations")
    parser.add_argument("--donations", type=int)
    parser.add_argument("--concurrency", type=int, help="poll.concurrency (default: the configured 8)")
    parser.add_argument(
        "--sandbox",
        choices=("process", "thread"),
        default="process",
        help="where the AzamPay sandbox runs: its own process (default; AzamPay is remote) or a thread of this one",
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    count = args.donations or (1_000 if args.quick else 10_000)

    from jobs.fold import run_fold
    from jobs.poll import run_poll
    from pipeline.azampay import AzamPayClient
    from pipeline.config import load_config
    from pipeline.db import make_engine
    from pipeline.logs import configure_logging

    with tempfile.TemporaryDirectory(prefix="bench-poll-") as temp:
        if args.db == "sqlite":
            url = fresh_sqlite(Path(temp))
        else:
            base = os.environ.get("AZAMRECON_BENCH_POLL_MYSQL_URL", DEFAULT_MYSQL_BENCH)
            reason = mysql_reachable(base)
            if reason:
                raise SystemExit(f"MariaDB not reachable: {reason}")
            url = fresh_mysql(base)
        now = datetime.now(UTC).replace(microsecond=0)
        with sandbox_for(args.sandbox, Path(temp)) as sandbox:
            print(f"bench.poll: seeding {count:,} stuck donations ...", file=sys.stderr, flush=True)
            seed(url, sandbox, count, now - timedelta(minutes=30))
            overrides = {
                "database.url": url,
                "logging.dir": str(Path(temp) / "logs"),
                "azampay.auth_url": sandbox.url,
                "azampay.checkout_url": sandbox.url,
                "azampay.client_id": sandbox.settings.client_id,
                "azampay.client_secret": sandbox.settings.client_secret,
                "azampay.api_key": sandbox.settings.api_key,
            }
            if args.concurrency:
                overrides["poll.concurrency"] = args.concurrency
            config = load_config(None, environ={}, overrides=overrides)
            configure_logging(config.logging, component="poll", stderr_level="WARNING")
            engine = make_engine(config.database)
            with AzamPayClient(config.azampay) as client:
                sandbox_cpu = sandbox.cpu_seconds()
                cpu = time.process_time()
                started = time.perf_counter()
                report = run_poll(engine, config, client, now)
                seconds = time.perf_counter() - started
                cpu = time.process_time() - cpu
                sandbox_cpu = None if sandbox_cpu is None else sandbox.cpu_seconds() - sandbox_cpu
            calls = sandbox.status_calls()
            fold_started = time.perf_counter()
            folded = run_fold(engine, config, now + timedelta(minutes=1), announce=False)
            fold_seconds = time.perf_counter() - fold_started
            engine.dispose()

    ok = report.checked == count and report.errors == 0 and report.appended == count and calls >= count
    lines = [
        f"bench.poll ({args.db}{', quick' if args.quick else ''}) | {machine_line()}",
        f"{count:,} stuck donations, sandbox on 127.0.0.1 in {'its own process' if args.sandbox == 'process' else 'a thread of the poller process'}, "
        f"poll.concurrency = {config.poll.concurrency}",
        "",
        "| phase | donations | seconds | calls/s | CPU ms per call | result |",
        "|---|---:|---:|---:|---|---|",
        f"| **run_poll** | {count:,} | {seconds:.2f} | **{calls / seconds:,.0f}** | {_per_call(cpu, calls, sandbox_cpu, args.sandbox)} "
        f"| checked {report.checked:,}, appended {report.appended:,}, errors {report.errors}, success {report.success:,}, failed {report.failed:,}, pending {report.pending:,} |",
        f"| fold of the answers | {folded.events:,} events | {fold_seconds:.2f} | | | {folded.transitions:,} status changes, {folded.credits_added:,} credits |",
        "",
        f"target: {count:,} in <= {30 * count / 10_000:.0f} s (scaled): {'met' if seconds <= 30 * count / 10_000 else 'NOT met'}; "
        f"invariant every donation asked once and answered: {'OK' if ok else 'FAILED'}",
    ]
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "donations": count,
                    "seconds": seconds,
                    "status_calls": calls,
                    "checked": report.checked,
                    "appended": report.appended,
                    "errors": report.errors,
                    "success": report.success,
                    "failed": report.failed,
                    "pending": report.pending,
                    "fold_events": folded.events,
                    "credits": folded.credits_added,
                    "concurrency": config.poll.concurrency,
                    "sandbox": args.sandbox,
                    "poller_cpu_seconds": cpu,
                    "sandbox_cpu_seconds": sandbox_cpu,
                },
                indent=2,
            )
        )
    return 0 if ok else 1


def _per_call(cpu: float, calls: int, sandbox_cpu: float | None, mode: str) -> str:
    if not calls:
        return "-"
    if mode == "thread":
        return f"{cpu / calls * 1e3:.2f} (poller + sandbox, one process)"
    return f"poller {cpu / calls * 1e3:.2f}, sandbox {sandbox_cpu / calls * 1e3:.2f}"


if __name__ == "__main__":
    sys.exit(main())

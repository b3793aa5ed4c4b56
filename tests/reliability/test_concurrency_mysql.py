"""Concurrency 4, on MariaDB: two `azamrecon scheduler` daemons (fold every 0.2 s), two more fold
processes, and three `serve` processes (1 worker each, so auto-increment ids commit out of order),
all on one database, under concurrent callbacks (duplicates, conflicts, mismatches, unknown references).

No event is skipped (every event that names a donation is in that donation's applied ids), none is
applied twice (applied ids are unique and counted once), no donation has two credits, the invariants
hold and the live state equals a rebuild (zero differences)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter

import pytest
from sqlalchemy import select

from jobs.rebuild import check
from pipeline.db import transaction
from pipeline.models import Donation, FoldCheckpoint, PaymentEvent
from pipeline.store.state import SqlFoldStore
from tests.reliability.helpers import (
    SendLog,
    add_donation_row,
    add_patient_row,
    callback_json,
    credits_per_donation,
    markers_in_log,
    send_concurrently,
    stop_process,
)
from tests.servers import REPO, ServerProcess, config_settings, free_port, write_config


def spawn(args: list[str], log_path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


@pytest.mark.mysql
def test_two_schedulers_two_folds_three_receivers(mysql_backend, tmp_path, long_run, figures):
    backend = mysql_backend
    rng = random.Random(5)
    donations = 150 if long_run else 60
    patients = [add_patient_row(backend.engine, f"P{i}", required="20000") for i in range(4)]
    refs = {}
    for i in range(donations):
        reference = f"RHCI-DN-C{i}-20260114093000"
        refs[reference] = add_donation_row(backend.engine, reference, rng.choice(patients + [None]), amount="1000")
    dead = f"http://127.0.0.1:{free_port()}"  # AzamPay is never called here; if it were, only loopback
    settings = config_settings(
        backend,
        **{
            "fold.batch_size": 25,
            "scheduler.fold_interval_seconds": 0.2,
            "scheduler.poll_interval_seconds": 3600,
            "scheduler.spool_interval_seconds": 3600,
            "azampay.auth_url": dead,
            "azampay.checkout_url": dead,
        },
    )
    config_path = write_config(tmp_path / "concurrency.yaml", settings)
    config = backend.config(
        **{k: v for k, v in settings.items() if k not in ("database.url", "logging.dir", "receiver.spool_dir")}
    )
    seconds = 25 if long_run else 8
    bodies = []
    for n in range(5000 if long_run else 2000):
        reference = rng.choice(list(refs))
        kind = rng.choices(["success", "failure", "mismatch", "unknown", "weird"], weights=[60, 15, 8, 10, 7])[0]
        marker = f"c{n}"
        if kind == "unknown":
            reference = f"RHCI-DN-NOPE-{n}"
        bodies.append(
            (
                marker,
                callback_json(
                    reference,
                    marker,
                    status={"failure": "failed", "weird": "maybe"}.get(kind, "success"),
                    amount="999" if kind == "mismatch" else "1000",
                    transaction_id=f"TX-{reference}",
                ),
            )
        )
    servers = [ServerProcess(config_path, log_dir=tmp_path / f"serve{i}") for i in range(3)]
    daemons: list[subprocess.Popen] = []
    log = SendLog()
    try:
        for server in servers:
            server.start()
        daemons += [
            spawn(["-m", "jobs.cli", "scheduler", "--config", str(config_path)], tmp_path / f"scheduler{i}.log")
            for i in range(2)
        ]
        daemons += [
            spawn(
                ["-m", "tests.reliability.fold_runner", str(config_path), "duration", str(seconds + 4)],
                tmp_path / f"fold{i}.log",
            )
            for i in range(2)
        ]
        started = time.monotonic()
        send_concurrently(
            [server.callback_url for server in servers], bodies, log, threads=12, deadline_seconds=seconds
        )
        # let the daemons catch up (bounded), while they still run concurrently
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with transaction(backend.engine) as session:
                position = session.scalar(select(FoldCheckpoint.position).where(FoldCheckpoint.name == "main")) or 0
                gaps = json.loads(
                    session.scalar(select(FoldCheckpoint.gaps).where(FoldCheckpoint.name == "main")) or "[]"
                )
                top = session.scalar(select(PaymentEvent.id).order_by(PaymentEvent.id.desc()).limit(1)) or 0
            if position >= top and not gaps:
                break
            time.sleep(0.2)
        load_seconds = time.monotonic() - started
    finally:
        for process in daemons:
            stop_process(process)
        for server in servers:
            server.stop()
    assert all(process.returncode in (0, -15) for process in daemons), [
        (p.args, p.returncode, (tmp_path / "scheduler0.log").read_text()[-2000:]) for p in daemons
    ]
    in_log = markers_in_log(backend.engine)
    acked = log.with_status(lambda s: s in (200, 404))
    lost = [m for m in acked if in_log.get(m) != 1]
    with transaction(backend.engine) as session:
        checkpoint = SqlFoldStore(session).read_checkpoint("main")
        events = list(
            session.execute(select(PaymentEvent.id, PaymentEvent.utilityref).where(PaymentEvent.source == "callback"))
        )
        states = {d.id: d for d in session.scalars(select(Donation))}
        problems = SqlFoldStore(session).invariant_violations()
        applied_by_donation = SqlFoldStore(session).applied_events(states)
    applied: Counter = Counter()
    twice = []
    for donation in states.values():
        ids = applied_by_donation.get(donation.id, [])
        applied.update(ids)
        if len(ids) != len(set(ids)) or donation.events_applied != len(ids):
            twice.append(donation.id)
    skipped = [event_id for event_id, utilityref in events if utilityref in refs and applied.get(event_id) != 1]
    result = check(backend.engine, config)
    doubles = [d for d, n in credits_per_donation(backend.engine).items() if n > 1]
    fold_runs = backend.scalar("SELECT COUNT(*) FROM job_runs WHERE job = 'fold'")
    figures.record(
        "4. concurrency on MariaDB",
        "2 scheduler daemons + 2 fold processes + 3 receivers (1 worker each) on one database, 12 concurrent clients",
        len(log.answers),
        {
            "events": len(events),
            "acknowledged not exactly once in the log": len(lost),
            "events skipped": len(skipped),
            "events applied twice": len(twice),
            "double credits": len(doubles),
            "invariant violations": len(problems),
            "rebuild --check differences": len(result.differences),
            "gaps left": len(checkpoint.gaps),
            "scheduled fold runs recorded": fold_runs,
            "seconds": round(load_seconds, 1),
        },
    )
    assert checkpoint.position >= max(event_id for event_id, _ in events) and not checkpoint.gaps, (
        "the folds did not catch up"
    )
    assert fold_runs > 0, "the scheduler daemons never folded"
    assert all("scheduler started" in (tmp_path / f"scheduler{i}.log").read_text() for i in range(2))
    assert not lost, lost[:5]
    assert not skipped, f"{len(skipped)} events never applied, e.g. {skipped[:10]}"
    assert not twice, twice[:10]
    assert not doubles and problems == []
    assert result.differences == [], result.differences[:10]

"""A bounded soak (hostile traffic, "A soak"): a real `azamrecon serve` and `azamrecon scheduler` on loopback
take paced traffic at about 80% of the ceiling measured at the start of the same run, for
$AZAMRECON_SOAK_SECONDS (default 60 s; 600 s with --long), on SQLite and on MariaDB. The mix: valid
successes, duplicates of them, hostile callbacks (a foreign reference with a donation id hint), unmatched
references, malformed JSON and bodies nested 950 lists deep. Partway, `kill -9` hits the receiver, and
later the scheduler (the fold); both are restarted.

Reported (docs/RELIABILITY.md): acknowledged vs stored, double credits, `rebuild --check` differences,
callback p99 per minute, receiver RSS per minute. Passes with 0 lost, 0 double credits, 0 differences.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import pytest

from jobs.fold import run_fold
from jobs.rebuild import check
from tests.reliability.helpers import (
    add_donation_row,
    add_patient_row,
    callback_json,
    credits_per_donation,
    kill9,
    markers_in_log,
    stop_process,
)
from tests.servers import REPO, ServerProcess, config_settings, free_port, write_config

KINDS = ("valid", "duplicate", "hostile", "unmatched", "malformed", "nested")
WEIGHTS = (45, 15, 10, 15, 5, 10)


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def nested(marker: str, depth: int = 950) -> bytes:
    """A valid callback (its marker findable) whose extra field is `depth` lists deep."""
    inner = "[" * depth + "]" * depth
    return callback_json("RHCI-DN-NESTED-1", marker)[:-1] + f', "deep": {inner}}}'.encode()


class Traffic:
    """Builds the soak's bodies: each has a unique marker (mnoreference) except malformed ones."""

    def __init__(self, references: list[str], rng: random.Random):
        self.references, self.rng = references, rng
        self.sent_valid: list[tuple[str, bytes]] = []
        self.n = 0

    def next(self) -> tuple[str, str, bytes]:
        self.n += 1
        marker = f"s{self.n}"
        kind = self.rng.choices(KINDS, WEIGHTS)[0]
        if kind == "duplicate" and not self.sent_valid:
            kind = "valid"
        if kind == "valid":
            reference = self.rng.choice(self.references)
            body = callback_json(reference, marker, transaction_id=f"TX-{reference}")
            self.sent_valid.append((marker, body))
        elif kind == "duplicate":  # the same callback again: a new marker, the same facts
            reference = self.rng.choice(self.references)
            body = callback_json(reference, marker, transaction_id=f"TX-{reference}")
        elif kind == "hostile":  # another system's reference, naming one of ours only by id
            body = callback_json(
                "RHCI-DN-1-20251201000000",
                marker,
                amount="5000",
                additionalProperties={"donation_id": "1"},
                msisdn="0711000111",
            )
        elif kind == "unmatched":
            body = callback_json(f"RHCI-DN-{900_000 + self.n}-20260114093000", marker)
        elif kind == "malformed":
            body = b'{"transactionstatus": "success", "utilityref": ' + marker.encode()
        else:
            body = nested(marker)
        return kind, marker, body


def spawn_scheduler(config_path, log_path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "scheduler", "--config", str(config_path)],
        cwd=REPO,
        stdout=open(log_path, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def paced(
    url_of,
    traffic: Traffic,
    rate: float,
    seconds: float,
    threads: int,
    answers: dict,
    timings: list,
    lock: threading.Lock,
    stop: threading.Event,
) -> None:
    """POST at `rate` per second in total for `seconds`, from `threads` clients; no retries."""
    begin = time.monotonic()
    slot = iter(range(10**9))
    slot_lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(timeout=10.0) as client:
            while not stop.is_set():
                with slot_lock:
                    i = next(slot)
                    kind, marker, body = traffic.next()
                due = begin + i / rate
                if due - begin > seconds:
                    return
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                started = time.monotonic()
                try:
                    status = client.post(
                        url_of(), content=body, headers={"content-type": "application/json"}
                    ).status_code
                except httpx.HTTPError:
                    status = None
                with lock:
                    answers[marker] = (kind, status)
                    if status is not None:
                        timings.append((started - begin, time.monotonic() - started))

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for worker_thread in workers:
        worker_thread.start()
    for worker_thread in workers:
        worker_thread.join(seconds + 30)


def ceiling(url: str, traffic: Traffic, seconds: float = 3.0, threads: int = 16) -> float:
    """Callbacks per second the receiver answered from `threads` unpaced clients (the same client code)."""
    done = Counter()
    deadline = time.monotonic() + seconds

    def worker() -> None:
        with httpx.Client(timeout=10.0) as client:
            while time.monotonic() < deadline:
                kind, marker, body = traffic.next()
                try:
                    client.post(
                        url,
                        content=callback_json("RHCI-DN-CEILING-1", f"ceiling-{marker}"),
                        headers={"content-type": "application/json"},
                    )
                    done["n"] += 1
                except httpx.HTTPError:
                    pass

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for worker_thread in workers:
        worker_thread.start()
    for worker_thread in workers:
        worker_thread.join(seconds + 15)
    return done["n"] / seconds


@pytest.mark.parametrize("db", ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def test_soak(db, request, tmp_path, long_run, figures):
    backend = request.getfixturevalue("sqlite_backend" if db == "sqlite" else "mysql_backend")
    seconds = float(os.environ.get("AZAMRECON_SOAK_SECONDS") or (600 if long_run else 60))
    rng = random.Random(16)
    patient = add_patient_row(backend.engine, required="1000000000")
    references = [f"RHCI-DN-{i}-20260114093000" for i in range(1, 301)]
    for reference in references:
        add_donation_row(backend.engine, reference, patient, transaction_id=f"TX-{reference}")
    dead = f"http://127.0.0.1:{free_port()}"  # AzamPay is never reached: the poller would only hit loopback
    config_path = write_config(
        tmp_path / "soak.yaml",
        config_settings(
            backend,
            **{
                "azampay.auth_url": dead,
                "azampay.checkout_url": dead,
                "scheduler.poll_interval_seconds": 3600,
            },
        ),
    )
    config = backend.config()
    traffic = Traffic(references, rng)
    server = ServerProcess(config_path, log_dir=tmp_path / "serve0").start()
    scheduler = spawn_scheduler(config_path, tmp_path / "scheduler.log")
    answers: dict[str, tuple[str, int | None]] = {}
    timings: list[tuple[float, float]] = []
    rss: dict[int, float] = {}
    lock, stop = threading.Lock(), threading.Event()
    current = {"server": server}
    try:
        measured = ceiling(server.callback_url, traffic)
        rate = max(5.0, 0.8 * measured)
        sender = threading.Thread(
            target=paced,
            args=(lambda: current["server"].callback_url, traffic, rate, seconds, 12, answers, timings, lock, stop),
            daemon=True,
        )
        began = time.monotonic()
        sender.start()
        kills = {"receiver": False, "fold": False}
        while sender.is_alive() and time.monotonic() - began < seconds + 40:
            elapsed = time.monotonic() - began
            minute = int(elapsed // 60)
            value = rss_mb(current["server"].process.pid)
            if value is not None:
                rss[minute] = max(rss.get(minute, 0.0), value)
            if not kills["receiver"] and elapsed > seconds * 0.35:
                kill9(current["server"].process)  # requests in flight get no answer; AzamPay would retry them
                current["server"] = ServerProcess(config_path, port=server.port, log_dir=tmp_path / "serve1").start()
                kills["receiver"] = True
            if not kills["fold"] and elapsed > seconds * 0.6:
                kill9(scheduler)
                scheduler = spawn_scheduler(config_path, tmp_path / "scheduler.log")
                kills["fold"] = True
            time.sleep(0.5)
        sender.join(30)
    finally:
        stop.set()
        stop_process(scheduler)
        current["server"].stop()
    run_fold(backend.engine, config, __import__("datetime").datetime.now(__import__("datetime").timezone.utc))
    in_log = markers_in_log(backend.engine)
    acked = [
        marker
        for marker, (kind, status) in answers.items()
        if status is not None and 200 <= status < 500 and kind != "malformed"
    ]
    lost = [marker for marker in acked if in_log.get(marker, 0) == 0]
    doubled = [marker for marker, count in in_log.items() if count > 1]
    credits = credits_per_donation(backend.engine)
    double_credits = [donation for donation, count in credits.items() if count > 1]
    paid = {
        json.loads(body)["utilityref"]
        for marker, body in traffic.sent_valid
        if answers.get(marker, ("", None))[1] == 200
    }
    completed = backend.scalar("SELECT COUNT(*) FROM donations WHERE status = 'COMPLETED'")
    differences = check(backend.engine, config).differences
    per_minute = {}
    for at, took in timings:
        per_minute.setdefault(int(at // 60), []).append(took)
    p99 = {
        minute: sorted(values)[int(0.99 * (len(values) - 1))] * 1000 for minute, values in sorted(per_minute.items())
    }
    statuses = Counter(status for _, status in answers.values())
    figures.record(
        f"soak ({db})",
        f"{seconds:.0f} s at {rate:.0f}/s (80% of {measured:.0f}/s measured): valid, duplicate, hostile, unmatched, malformed, 950-deep; "
        "kill -9 of the receiver and of the fold partway",
        len(answers),
        {
            "acknowledged": len(acked),
            "acknowledged but not stored": len(lost),
            "stored twice": len(doubled),
            "double credits": len(double_credits),
            "rebuild --check differences": len(differences),
            "callback p99 ms per minute": {m: round(v, 1) for m, v in p99.items()},
            "receiver RSS MB per minute": {m: round(v, 1) for m, v in sorted(rss.items())},
            "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
        },
    )
    assert kills == {"receiver": True, "fold": True}
    assert len(acked) > 0.5 * rate * seconds * 0.5, (len(acked), rate, seconds)
    assert not lost, f"{len(lost)} acknowledged callbacks are not in the log, e.g. {lost[:5]}"
    assert not doubled and not double_credits
    assert completed >= len(paid) > 0
    assert differences == [], differences[:10]
    assert 500 not in statuses

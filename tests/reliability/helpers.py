"""Shared helpers of the reliability suite: bounded concurrent callback senders, markers in the log,
process kills, database set-up. Loopback only; every loop is bounded in count and in time."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import select

from pipeline.db import transaction
from pipeline.models import Donation, Patient, PaymentEvent
from sandbox.testing import stop_process_group
from tests.builders import pending_donation

T0 = datetime(2026, 1, 14, 9, 30, 0, tzinfo=UTC)
_MARKER = re.compile(rb'"mnoreference": "([^"]+)"')


def callback_json(
    reference: str,
    marker: str,
    status: str = "success",
    amount: str = "1000",
    transaction_id: str | None = None,
    **extra,
) -> bytes:
    """A live-shaped callback; `marker` (mnoreference) makes every request's body unique."""
    tx = transaction_id or f"TX-{marker}"
    body = {
        "message": "SUCCESS",
        "user": None,
        "password": None,
        "clientId": None,
        "transactionstatus": status,
        "operator": "Mpesa",
        "reference": tx,
        "externalreference": tx,
        "utilityref": reference,
        "amount": amount,
        "transid": tx,
        "msisdn": "0758285812",
        "mnoreference": marker,
        "submerchantAcc": None,
        "additionalProperties": {},
    }
    body.update(extra)
    return json.dumps(body).encode()


def add_patient_row(engine, name: str = "Amina", required: str = "100000000") -> int:
    with transaction(engine) as session:
        patient = Patient(name=name, funding_required=Decimal(required), created_at=T0)
        session.add(patient)
        session.flush()
        return patient.id


def add_donation_row(
    engine, reference: str, patient_id: int | None, amount: str = "1000", transaction_id: str | None = None
) -> int:
    """A PENDING donation with an explicit external_reference (so a test can name it before it exists)."""
    with transaction(engine) as session:
        donation = Donation(**pending_donation(reference, T0, amount, transaction_id, patient_id=patient_id))
        session.add(donation)
        session.flush()
        return donation.id


def markers_in_log(engine, source: str | None = None) -> Counter:
    """How many times each callback marker (mnoreference) is in payment_events."""
    found: Counter = Counter()
    query = select(PaymentEvent.body)
    if source:
        query = query.where(PaymentEvent.source == source)
    with engine.connect() as connection:
        for (body,) in connection.execute(query):
            try:
                marker = json.loads(body).get("mnoreference")
            except (ValueError, AttributeError, RecursionError):  # a hostile body (the soak nests 950 deep)
                found_marker = _MARKER.search(body)
                marker = found_marker.group(1).decode() if found_marker else None
            if marker:
                found[marker] += 1
    return found


@dataclass
class SendLog:
    """What the client saw: marker -> HTTP status (or None for no answer)."""

    answers: dict[str, int | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, marker: str, status: int | None) -> None:
        with self.lock:
            self.answers[marker] = status

    def with_status(self, predicate) -> list[str]:
        return [m for m, s in self.answers.items() if s is not None and predicate(s)]

    @property
    def acked(self) -> list[str]:
        return self.with_status(lambda s: 200 <= s < 300)


def send_concurrently(
    urls: list[str],
    bodies: list[tuple[str, bytes]],
    log: SendLog,
    threads: int = 8,
    stop: threading.Event | None = None,
    deadline_seconds: float = 30.0,
    timeout: float = 10.0,
) -> None:
    """POST each (marker, body) once to one of `urls` (round robin) from `threads` threads. No retries:
    a request that gets no answer is logged as None. Stops early when `stop` is set or at the deadline."""
    stop = stop or threading.Event()
    deadline = time.monotonic() + deadline_seconds
    index = iter(range(len(bodies)))
    index_lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(timeout=timeout) as client:
            while not stop.is_set() and time.monotonic() < deadline:
                with index_lock:
                    i = next(index, None)
                if i is None:
                    return
                marker, body = bodies[i]
                try:
                    answer = client.post(
                        urls[i % len(urls)], content=body, headers={"content-type": "application/json"}
                    )
                    log.put(marker, answer.status_code)
                except httpx.HTTPError:
                    log.put(marker, None)

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for worker_thread in workers:
        worker_thread.start()
    for worker_thread in workers:
        worker_thread.join(max(0.1, deadline - time.monotonic() + timeout + 1))


def kill9(process: subprocess.Popen) -> None:
    """SIGKILL the process group of a subprocess started with start_new_session=True, and reap it."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        pass


def stop_process(process: subprocess.Popen, timeout: float = 15.0) -> int | None:
    return stop_process_group(process, timeout)


def with_port(url: str, port: int) -> str:
    """The same database URL through another loopback port (a TcpProxy)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, f"{userinfo}127.0.0.1:{port}", parts.path, parts.query, parts.fragment))


def credits_per_donation(engine) -> Counter:
    from pipeline.models import FundingCredit

    with engine.connect() as connection:
        return Counter(donation_id for (donation_id,) in connection.execute(select(FundingCredit.donation_id)))

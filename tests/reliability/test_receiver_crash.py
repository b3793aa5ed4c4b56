"""Fault 1: `kill -9` a real `azamrecon serve` while concurrent callbacks arrive, several times.

Every callback that got a 2xx must be in the log exactly once (group commit answers only after the
commit): the client's ack record is compared with the log by a unique marker (mnoreference) per request.
The client never retries, so no marker may be in the log twice either.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from tests.reliability.helpers import (
    SendLog,
    add_donation_row,
    add_patient_row,
    callback_json,
    kill9,
    markers_in_log,
    send_concurrently,
)
from tests.servers import ServerProcess, config_settings, write_config


@pytest.mark.parametrize("db", ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def test_kill9_receiver_loses_no_acknowledged_callback(db, request, tmp_path, long_run, figures):
    backend = request.getfixturevalue("sqlite_backend" if db == "sqlite" else "mysql_backend")
    rounds = 12 if long_run else (5 if db == "sqlite" else 3)
    per_round = 400
    rng = random.Random(7)
    patient = add_patient_row(backend.engine)
    reference = "RHCI-DN-1-20260114093000"
    add_donation_row(backend.engine, reference, patient)
    config = write_config(tmp_path / "serve.yaml", config_settings(backend, **{"receiver.group_commit_max_batch": 64}))
    log = SendLog()
    kills = 0
    for round_number in range(rounds):
        server = ServerProcess(config, log_dir=tmp_path / f"round{round_number}").start()
        bodies = [(f"r{round_number}-{i}", callback_json(reference, f"r{round_number}-{i}")) for i in range(per_round)]
        sender = threading.Thread(
            target=send_concurrently,
            args=([server.callback_url], bodies, log),
            kwargs={"threads": 12, "deadline_seconds": 20},
            daemon=True,
        )
        sender.start()
        time.sleep(rng.uniform(0.15, 0.8))  # a random moment, while requests are in flight
        kill9(server.process)
        kills += 1
        sender.join(30)
        assert not sender.is_alive()
    in_log = markers_in_log(backend.engine)
    acked = log.acked
    lost = [marker for marker in acked if in_log.get(marker, 0) == 0]
    doubled = [marker for marker, count in in_log.items() if count > 1]
    unanswered = sum(1 for status in log.answers.values() if status is None)
    figures.record(
        f"1. receiver kill -9 ({db})",
        f"{rounds} × kill -9 of `serve` at a random moment under 12 concurrent clients",
        kills,
        {
            "acknowledged callbacks lost": f"0 of {len(acked)}" if not lost else f"{len(lost)} of {len(acked)}",
            "stored twice": len(doubled),
            "requests refused or cut by the kills (AzamPay retries)": unanswered,
            "unanswered but stored": sum(1 for m, s in log.answers.items() if s is None and in_log.get(m)),
        },
    )
    assert acked, "no callback was acknowledged: the test did not exercise anything"
    assert unanswered, "no request was cut by a kill: the kills came too late"
    assert not lost, f"{len(lost)} acknowledged callbacks are not in the log, e.g. {lost[:5]}"
    assert not doubled, f"callbacks stored twice: {doubled[:5]}"
    assert all(status in (200, None) for status in log.answers.values()), {s for s in log.answers.values()}

"""Fault 3: MariaDB becomes unreachable while callbacks arrive (a TcpProxy in front of it is stopped:
listener closed, every connection reset; then started again on the same port).

During the outage callbacks are answered 503 and spooled to disk; after recovery the spool ingest
leaves every one of them in the log exactly once (running it twice adds nothing). A dying disk (the
spool directory replaced by a file, since root ignores permission bits) during a second outage gives a
5xx, never a 2xx."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
import pytest

from jobs.spool import ingest_spool
from tests.reliability.helpers import (
    SendLog,
    add_donation_row,
    add_patient_row,
    callback_json,
    markers_in_log,
    send_concurrently,
    with_port,
)
from tests.servers import ServerProcess, config_settings, write_config
from tests.tcp_proxy import TcpProxy


def wait_health(url: str, want: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=6).status_code == want:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


@pytest.mark.mysql
def test_mariadb_outage_spools_and_ingests_exactly_once(mysql_backend, tmp_path, long_run, figures):
    backend = mysql_backend
    reference = "RHCI-DN-1-20260114093000"
    add_donation_row(backend.engine, reference, add_patient_row(backend.engine))
    outages = 4 if long_run else 2
    spool_dir = tmp_path / "spool"
    with TcpProxy("127.0.0.1", urlsplit(backend.url).port or 3306) as proxy:
        config = write_config(
            tmp_path / "serve.yaml",
            config_settings(
                backend, **{"database.url": with_port(backend.url, proxy.port), "receiver.spool_dir": str(spool_dir)}
            ),
        )
        server = ServerProcess(config, log_dir=tmp_path / "server").start()
        log = SendLog()
        try:
            for outage in range(outages):
                bodies = [(f"o{outage}-{i}", callback_json(reference, f"o{outage}-{i}")) for i in range(300)]
                stop = threading.Event()
                sender = threading.Thread(
                    target=send_concurrently,
                    args=([server.callback_url], bodies, log),
                    kwargs={"threads": 6, "stop": stop, "deadline_seconds": 25},
                    daemon=True,
                )
                sender.start()
                time.sleep(0.3)
                proxy.stop()  # the outage starts while callbacks arrive
                assert wait_health(server.url, 503), "healthz did not notice the outage"
                time.sleep(0.7)
                proxy.start()
                assert wait_health(server.url, 200), "healthz did not recover"
                sender.join(30)
                stop.set()
            # the dying disk: a second kind of outage, where the spool cannot be written either
            proxy.stop()
            assert wait_health(server.url, 503)
            moved = tmp_path / "spool.moved"
            spool_dir.rename(moved)
            spool_dir.write_text("not a directory: the disk is failing\n")
            disk_log = SendLog()
            send_concurrently(
                [server.callback_url],
                [(f"d-{i}", callback_json(reference, f"d-{i}")) for i in range(40)],
                disk_log,
                threads=4,
                deadline_seconds=20,
            )
            spool_dir.unlink()
            moved.rename(spool_dir)
            proxy.start()
            assert wait_health(server.url, 200)
            time.sleep(1.0)  # past the writer's outage back-off (0.5 s), within which callbacks are still spooled
            after = SendLog()
            send_concurrently(
                [server.callback_url],
                [(f"a-{i}", callback_json(reference, f"a-{i}")) for i in range(20)],
                after,
                threads=4,
                deadline_seconds=20,
            )
            # ingest while the receiver still runs (it holds its spool file open), then again: idempotent
            now = datetime.now(UTC)
            first = ingest_spool(backend.engine, spool_dir, now)
            second = ingest_spool(backend.engine, spool_dir, now)
        finally:
            server.stop()
    third = ingest_spool(backend.engine, spool_dir, datetime.now(UTC))  # after the receiver closed its file
    in_log = markers_in_log(backend.engine)
    spooled = log.with_status(lambda s: s == 503)
    ok = log.with_status(lambda s: s == 200)
    others = {s for s in log.answers.values() if s not in (200, 503)}
    lost = [m for m in ok + spooled if in_log.get(m, 0) != 1]
    disk_statuses = sorted({s for s in disk_log.answers.values()}, key=str)
    disk_2xx = disk_log.with_status(lambda s: 200 <= s < 300)
    figures.record(
        "3. MariaDB outage (TcpProxy stop/restart)",
        f"{outages} outages of ~1-2 s under 6 concurrent clients, then spool ingest run twice",
        outages,
        {
            "answered 200": len(ok),
            "answered 503 and spooled": len(spooled),
            "not exactly once in the log after ingest": len(lost),
            "ingested by the 1st ingest": first["ingested"],
            "committed as the link dropped, spooled too, skipped by ingest": first["duplicates"],
            "added by repeated ingests": second["ingested"] + third["ingested"],
        },
    )
    figures.record(
        "3b. MariaDB outage + unwritable spool",
        "outage while the spool directory is replaced by a file (a dying disk)",
        len(disk_log.answers),
        {
            "answers": ", ".join(map(str, disk_statuses)),
            "2xx": len(disk_2xx),
            "200 after recovery": len(after.with_status(lambda s: s == 200)),
        },
    )
    assert spooled, "no callback arrived during an outage"
    assert not others, f"unexpected answers during an outage: {others}"
    assert not lost, (
        f"{len(lost)} acknowledged or spooled callbacks not exactly once in the log, e.g. {[(m, in_log.get(m)) for m in lost[:5]]}"
    )
    # the ingest works while the receiver runs (the scheduler's case), and a repeat adds nothing
    # (a batch whose COMMIT reached the server just before the connection dropped is spooled too: the ingest
    # recognises those rows, same body and arrival instant, and skips them)
    assert first["ingested"] + first["duplicates"] == len(spooled), (first, second, third, len(spooled))
    assert second["ingested"] == 0 and third["ingested"] == 0, (second, third)
    assert not disk_2xx and all(s is not None and s >= 500 for s in disk_log.answers.values()), disk_statuses
    assert after.with_status(lambda s: s == 200) and len(after.with_status(lambda s: s == 200)) == len(after.answers)


def test_ingest_skips_a_spooled_row_whose_commit_did_happen(sqlite_backend, tmp_path):
    """The outcome of a COMMIT cut by a dropped connection is unknown to the receiver, so it spools the batch;
    if the commit did happen, the ingest must not add the same request a second time (found by the outage test)."""
    from pipeline.db import transaction
    from pipeline.events import extract_fields
    from pipeline.store.events import append_events, event_row
    from pipeline.store.spool import spool_record
    from receiver.spool import Spool

    body = callback_json("RHCI-DN-1-20260114093000", "once")
    row = event_row(
        source="callback",
        body=body,
        received_at=datetime(2026, 1, 14, 9, 30, 0, 123456, tzinfo=UTC),
        auth="n/a",
        fields=extract_fields(body),
        content_type="application/json",
        remote_addr="127.0.0.1",
    )
    retry = dict(row, received_at=datetime(2026, 1, 14, 9, 30, 5, tzinfo=UTC))  # AzamPay's retry: kept
    with transaction(sqlite_backend.engine) as session:
        append_events(session, [dict(row)])
    spool = Spool(tmp_path / "spool")
    spool.write([spool_record(row, True), spool_record(retry, True)])
    spool.close()
    counts = ingest_spool(sqlite_backend.engine, tmp_path / "spool", datetime.now(UTC))
    assert (counts["ingested"], counts["duplicates"]) == (1, 1)
    assert markers_in_log(sqlite_backend.engine)["once"] == 2  # the original and the retry, not the spooled copy

"""Database outage: 503 with the request spooled; the spool ingested later exactly once, with the original received_at."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url
from starlette.testclient import TestClient

from jobs.cli import cli
from jobs.spool import ingest_spool
from pipeline.db import make_engine
from pipeline.schema import upgrade
from pipeline.store.spool import CLAIMED_SUFFIX
from receiver.app import CALLBACK_PATH, create_app
from receiver.spool import Spool
from tests.conftest import fixture_bytes
from tests.servers import add_donation, event_rows, write_config
from tests.tcp_proxy import TcpProxy

JSON = {"content-type": "application/json"}
GUIDE_REF = "RHCI-DN-999-20251219120000"


def _body(n: int) -> bytes:
    return fixture_bytes("callback_guide_example.json").replace(b"TEST123", b"OUT%04d" % n)


def spool_lines(directory) -> list[dict]:
    lines = []
    for path in sorted(directory.glob("*")):
        lines += [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return lines


class Outage:
    """A database the test can take away and give back: SQLite in a directory that is moved away,
    MariaDB behind a loopback TCP proxy that is stopped."""

    def __init__(self, backend):
        self.backend = backend
        if backend.name == "sqlite":
            self.dir = backend.tmp_path / "dbdir"
            self.dir.mkdir()
            self.url = f"sqlite:///{self.dir / 'azamrecon.db'}"
            self.engine = make_engine(backend.config(**{"database.url": self.url}).database)
            upgrade(self.engine)
            self.proxy = None
        else:
            target = make_url(backend.url)
            self.proxy = TcpProxy("127.0.0.1", target.port or 3306).start()
            self.url = target.set(port=self.proxy.port).render_as_string(hide_password=False)
            self.engine = backend.engine

    def down(self, app_engine) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        else:
            self.dir.rename(self.dir.with_name("dbdir.away"))
        app_engine.dispose()  # pooled connections go; new ones cannot be made

    def up(self) -> None:
        if self.proxy is not None:
            self.proxy.start()
        else:
            self.dir.with_name("dbdir.away").rename(self.dir)

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        elif self.engine is not self.backend.engine:
            self.engine.dispose()


@pytest.fixture
def outage(backend):
    made = Outage(backend)
    yield made
    made.close()


def test_outage_503_spooled_then_ingested_exactly_once(backend, outage):
    spool_dir = backend.tmp_path / "spool"
    add_donation(outage.engine, GUIDE_REF)
    app = create_app(backend.config(**{"database.url": outage.url}))
    with TestClient(app) as client:
        assert client.post(CALLBACK_PATH, content=_body(0), headers=JSON).status_code == 200
        outage.down(app.state.engine)
        before = datetime.now(UTC)
        answers = [client.post(CALLBACK_PATH, content=_body(n), headers=JSON) for n in range(1, 4)]
        answers.append(client.post(CALLBACK_PATH, content=b"{broken", headers=JSON))
        answers.append(
            client.post(
                CALLBACK_PATH, content=b"plain", headers={"content-type": "text/plain", "x-forwarded-for": "1.2.3.4"}
            )
        )
        after = datetime.now(UTC)
        assert [a.status_code for a in answers] == [503] * 5
        assert answers[0].headers["retry-after"] == "30"
        assert client.get("/healthz").status_code == 503
        outage.up()
        app.state.writer.outage_backoff_seconds = 0
        app.state.writer._down_until = 0
        assert client.post(CALLBACK_PATH, content=_body(9), headers=JSON).status_code == 200
    lines = spool_lines(spool_dir)
    assert len(lines) == 5 and len({line["id"] for line in lines}) == 5
    assert [base64.b64decode(line["body_b64"]) for line in lines] == [
        _body(1),
        _body(2),
        _body(3),
        b"{broken",
        b"plain",
    ]
    assert len(event_rows(outage.engine)) == 2  # nothing of the outage is in the log yet

    counts = ingest_spool(outage.engine, spool_dir, datetime.now(UTC))
    assert counts["ingested"] == 5 and counts["duplicates"] == 0 and counts["files_deleted"] == 1
    assert list(spool_dir.iterdir()) == []
    again = ingest_spool(outage.engine, spool_dir, datetime.now(UTC))
    assert again["ingested"] == 0 and again["lines"] == 0

    rows = event_rows(outage.engine)
    spooled = [r for r in rows if r.dedupe_key]
    assert len(rows) == 7 and len(spooled) == 5
    assert sorted(r.dedupe_key for r in spooled) == sorted("spool:" + line["id"] for line in lines)
    by_key = {r.dedupe_key: r for r in spooled}
    for line in lines:
        row = by_key["spool:" + line["id"]]
        assert row.received_at == datetime.fromisoformat(line["received_at"])
        assert before <= row.received_at <= after
    typed = [by_key["spool:" + line["id"]] for line in lines]
    assert [r.transaction_ref for r in typed[:3]] == ["OUT0001", "OUT0002", "OUT0003"]
    assert all(
        r.utilityref == GUIDE_REF and r.status == "SUCCESS" and r.parse_error is None and r.auth == "n/a"
        for r in typed[:3]
    )
    assert "invalid JSON" in typed[3].parse_error
    assert (
        "content type" in typed[4].parse_error and typed[4].utilityref is None and typed[4].content_type == "text/plain"
    )
    assert json.loads(typed[4].headers)["x-forwarded-for"] == "1.2.3.4"


def test_unwritable_spool_during_outage_is_5xx_never_2xx(backend, outage):
    blocker = backend.tmp_path / "not-a-dir"
    blocker.write_text("a file where the spool directory should be")
    app = create_app(backend.config(**{"database.url": outage.url, "receiver.spool_dir": str(blocker / "spool")}))
    with TestClient(app) as client:
        outage.down(app.state.engine)
        answers = [client.post(CALLBACK_PATH, content=_body(n), headers=JSON) for n in range(3)]
        outage.up()
    assert all(500 <= a.status_code < 600 and a.status_code != 503 for a in answers), [a.status_code for a in answers]
    assert event_rows(outage.engine) == []


def test_torn_last_line_is_skipped_and_file_kept(backend):
    spool_dir = backend.tmp_path / "spool"
    spool = Spool(spool_dir)
    from pipeline.store.events import event_row
    from pipeline.store.spool import spool_record

    received = datetime(2026, 1, 14, 9, 30, 0, 123456, tzinfo=UTC)
    records = [
        spool_record(event_row(source="callback", body=_body(n), received_at=received, auth="n/a"), typed=True)
        for n in range(3)
    ]
    path = spool.write(records)
    spool.close()
    with open(path, "ab") as handle:
        handle.write(b'{"v":1,"id":"torn","received_at":"2026-')  # a crash mid-write
    counts = ingest_spool(backend.engine, spool_dir, datetime.now(UTC))
    assert counts["ingested"] == 3 and counts["torn"] == 1 and counts["files_deleted"] == 0
    [kept] = list(spool_dir.iterdir())
    assert kept.name.endswith(CLAIMED_SUFFIX)
    again = ingest_spool(backend.engine, spool_dir, datetime.now(UTC))
    assert again["ingested"] == 0 and again["duplicates"] == 3
    rows = event_rows(backend.engine)
    assert len(rows) == 3 and all(r.received_at == received for r in rows)
    assert [r.transaction_ref for r in rows] == ["OUT0000", "OUT0001", "OUT0002"]


def test_invalid_line_is_counted_and_file_kept(sqlite_backend):
    spool_dir = sqlite_backend.tmp_path / "spool"
    spool_dir.mkdir()
    (spool_dir / "callbacks-x-1-ab-1.jsonl").write_bytes(b'{"id": "a"}\nnot json\n')
    counts = ingest_spool(sqlite_backend.engine, spool_dir, datetime.now(UTC))
    assert counts["invalid"] == 2 and counts["ingested"] == 0 and counts["files_deleted"] == 0
    assert len(list(spool_dir.iterdir())) == 1


def test_claimed_file_is_never_appended_to(sqlite_backend):
    """The ingest claims a file a live receiver is writing; the receiver's next lines go to a new file."""
    from pipeline.store.events import event_row
    from pipeline.store.spool import spool_record

    spool_dir = sqlite_backend.tmp_path / "spool"
    spool = Spool(spool_dir)
    now = datetime.now(UTC)

    def record(n):
        return spool_record(event_row(source="callback", body=_body(n), received_at=now, auth="n/a"), typed=True)

    first = spool.write([record(1)])
    counts = ingest_spool(sqlite_backend.engine, spool_dir, now)
    assert counts["ingested"] == 1 and not first.exists()
    second = spool.write([record(2), record(3)])
    assert second != first and second.exists()
    counts = ingest_spool(sqlite_backend.engine, spool_dir, now)
    assert counts["ingested"] == 2 and counts["files_deleted"] == 1
    spool.close()
    assert [r.transaction_ref for r in event_rows(sqlite_backend.engine)] == ["OUT0001", "OUT0002", "OUT0003"]


def test_locked_file_is_left_for_the_next_run(sqlite_backend):
    import fcntl

    from jobs.spool import claim

    spool_dir = sqlite_backend.tmp_path / "spool"
    spool_dir.mkdir()
    path = spool_dir / "callbacks-x-1-ab-1.jsonl"
    path.write_bytes(b"")
    with open(path, "rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        assert claim(path, wait_seconds=0.2) is None
    assert path.exists()
    assert claim(path) is not None and not path.exists()


def test_ingest_spool_command(sqlite_backend):
    from pipeline.store.events import event_row
    from pipeline.store.spool import spool_record

    spool_dir = sqlite_backend.tmp_path / "spool"
    spool = Spool(spool_dir)
    spool.write(
        [
            spool_record(
                event_row(source="callback", body=_body(1), received_at=datetime.now(UTC), auth="n/a"),
                typed=True,
            )
        ]
    )
    spool.close()
    config = write_config(
        sqlite_backend.tmp_path / "cli.yaml",
        {
            "database.url": sqlite_backend.url,
            "receiver.spool_dir": str(spool_dir),
            "logging.dir": str(sqlite_backend.tmp_path / "logs"),
            "privacy.key_file": str(sqlite_backend.tmp_path / "azamrecon.key"),
        },
    )
    runner = CliRunner()
    result = runner.invoke(cli, ["events", "ingest-spool", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "ingested=1" in result.output and "files_deleted=1" in result.output
    result = runner.invoke(cli, ["events", "ingest-spool", "--config", str(config)])
    assert result.exit_code == 0 and "ingested=0" in result.output
    assert len(event_rows(sqlite_backend.engine)) == 1

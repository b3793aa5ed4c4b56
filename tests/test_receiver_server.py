"""A real `azamrecon serve` process over loopback HTTP: concurrency, outage + spool ingest, logs, CLI errors."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import fixture_bytes
from tests.servers import ServerProcess, add_donation, config_settings, event_rows, free_port, run_cli, write_config
from tests.tcp_proxy import TcpProxy

JSON = {"content-type": "application/json"}
GUIDE_REF = "RHCI-DN-999-20251219120000"
PASSWORD = "Srv-pw-3b8e0c71-secret"


def _body(n: int, password: str = PASSWORD) -> bytes:
    data = json.loads(fixture_bytes("callback_guide_example.json"))
    data.update(reference=f"CC{n:04d}", transid=f"CC{n:04d}", password=password)
    return json.dumps(data).encode()


async def _post_all(url: str, bodies: list[bytes]) -> list[int]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        answers = await asyncio.gather(*(client.post(url, content=body, headers=JSON) for body in bodies))
    return [answer.status_code for answer in answers]


@pytest.mark.parametrize("workers", [1, 2])
def test_fifty_concurrent_callbacks_all_stored(backend, workers):
    add_donation(backend.engine, GUIDE_REF)
    config = write_config(backend.tmp_path / "serve.yaml", config_settings(backend, **{"webhook.password": PASSWORD}))
    with ServerProcess(config, workers=workers, log_dir=backend.tmp_path / "proc").start() as server:
        statuses = asyncio.run(_post_all(server.callback_url, [_body(n) for n in range(50)]))
        guide = httpx.post(
            server.callback_url, content=fixture_bytes("callback_guide_example.json"), headers=JSON, timeout=10
        )
        assert guide.status_code == 202  # a password is configured and the guide's request has none
    assert statuses == [200] * 50
    rows = event_rows(backend.engine)
    assert len(rows) == 51
    assert sorted(r.transaction_ref for r in rows[:50] if r.auth == "verified") == sorted(
        f"CC{n:04d}" for n in range(50)
    )
    assert rows[-1].auth == "unverified"
    # logs of the real process: the guide's grep works; the password is nowhere
    logs = backend.tmp_path / "logs"
    assert (logs / "payments.log").read_text().count("Received Azam Pay callback: {") == 51
    everything = "".join(p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file()) + server.output()
    assert PASSWORD not in everything
    warned = "worker processes on SQLite take turns at its one write lock" in server.output()
    assert warned == (workers > 1 and backend.name == "sqlite")


def _outage_setup(backend):
    """(database url for the server, take_down(), bring_up(), engine to check) for this backend."""
    if backend.name == "mysql":
        target = make_url(backend.url)
        proxy = TcpProxy("127.0.0.1", target.port or 3306).start()
        url = target.set(port=proxy.port).render_as_string(hide_password=False)
        return url, proxy.stop, proxy.start, proxy.stop
    # SQLite: the database lives in a directory that is moved away before the server opens it
    from pipeline.db import make_engine
    from pipeline.schema import upgrade

    directory = backend.tmp_path / "dbdir"
    directory.mkdir()
    url = f"sqlite:///{directory / 'azamrecon.db'}"
    engine = make_engine(backend.config(**{"database.url": url}).database)
    upgrade(engine)
    engine.dispose()
    away = directory.with_name("dbdir.away")
    return url, lambda: directory.rename(away), lambda: away.rename(directory), lambda: None


def test_real_server_outage_spools_and_ingest_replays_once(backend):
    url, down, up, cleanup = _outage_setup(backend)
    spool_dir = backend.tmp_path / "spool"
    settings = config_settings(backend, **{"database.url": url})
    config = write_config(backend.tmp_path / "serve.yaml", settings)
    server = ServerProcess(config, log_dir=backend.tmp_path / "proc")
    try:
        down()
        server.start(require_healthy=False)
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 503
        statuses = asyncio.run(_post_all(server.callback_url, [_body(n) for n in range(20)]))
        assert statuses == [503] * 20
        up()
        retried = 0  # 503s while the server notices the database is back: spooled as well
        if backend.name == "mysql":  # the same server recovers by itself once the database is back
            for _ in range(50):
                answer = httpx.post(server.callback_url, content=_body(100), headers=JSON, timeout=10)
                if answer.status_code != 503:
                    break
                retried += 1
                asyncio.run(asyncio.sleep(0.1))
            assert answer.status_code == 404
        server.stop()
    finally:
        server.stop()
        cleanup()
    lines = [json.loads(line) for path in spool_dir.iterdir() for line in path.read_bytes().splitlines()]
    assert len(lines) == 20 + retried
    assert "Error processing Azam Pay callback" in (backend.tmp_path / "logs" / "payments.log").read_text()

    engine_url = backend.url if backend.name == "mysql" else url
    cli_config = write_config(backend.tmp_path / "cli.yaml", {**settings, "database.url": engine_url})
    first = run_cli("events", "ingest-spool", config_path=cli_config)
    assert first.returncode == 0, first.stderr
    assert f"ingested={20 + retried}" in first.stdout
    second = run_cli("events", "ingest-spool", config_path=cli_config)
    assert second.returncode == 0 and "ingested=0" in second.stdout

    from pipeline.config import DatabaseConfig
    from pipeline.db import make_engine

    engine = make_engine(DatabaseConfig(url=engine_url))
    try:
        rows = [r for r in event_rows(engine) if r.dedupe_key]
        with engine.connect() as connection:
            runs = connection.exec_driver_sql("SELECT job, outcome FROM job_runs WHERE job = 'spool'").fetchall()
        assert [tuple(r) for r in runs] == [("spool", "ok"), ("spool", "ok")]  # the command records each run
    finally:
        engine.dispose()
    assert sorted(r.transaction_ref for r in rows) == sorted([f"CC{n:04d}" for n in range(20)] + ["CC0100"] * retried)
    received = {"spool:" + line["id"]: line["received_at"] for line in lines}
    assert {r.dedupe_key: r.received_at.isoformat(timespec="microseconds") for r in rows} == received


def test_serve_port_in_use_is_one_line_error(sqlite_backend):
    import socket

    config = write_config(sqlite_backend.tmp_path / "serve.yaml", config_settings(sqlite_backend))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli("serve", "--host", "127.0.0.1", "--port", str(port), config_path=config, timeout=30)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: cannot listen on 127.0.0.1:")


def test_serve_bad_allow_list_is_one_line_error(sqlite_backend):
    config = write_config(
        sqlite_backend.tmp_path / "serve.yaml",
        config_settings(sqlite_backend, **{"webhook.allowed_ips": ["not-an-ip"]}),
    )
    result = run_cli("serve", "--port", str(free_port()), config_path=config, timeout=30)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "error: invalid config value for webhook.allowed_ips: not an IP address or CIDR network: 'not-an-ip'"
    )

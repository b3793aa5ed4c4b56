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

    from pipeline.db import make_engine
    from pipeline.sections import DatabaseConfig

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


METRICS_DB_PASSWORD = "Db-pw-5c1f9e27-secret"
MYSQL_HOSTS = ("127.0.0.1", "localhost", "%%")  # "%%": PyMySQL formats the statement, even without parameters


def _counters(text: str) -> dict[str, float]:
    """Every sample of every counter family in a Prometheus text exposition."""
    counters = {
        line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ") and line.endswith(" counter")
    }
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            if series.split("{")[0].removesuffix("_total") in counters or series.split("{")[0] in counters:
                values[series] = float(value)
    return values


async def _load_and_scrape(server, bodies: list[bytes], scrapes: int) -> tuple[list[int], list[dict[str, float]]]:
    """Post the bodies 10 at a time while scraping /metrics `scrapes` times; all bounded by the client timeout."""
    async with httpx.AsyncClient(timeout=30.0) as client:

        async def post() -> list[int]:
            statuses = []
            for start in range(0, len(bodies), 10):
                answers = await asyncio.gather(
                    *(
                        client.post(server.callback_url, content=body, headers=JSON)
                        for body in bodies[start : start + 10]
                    )
                )
                statuses += [answer.status_code for answer in answers]
            return statuses

        async def scrape() -> list[dict[str, float]]:
            seen = []
            for _ in range(scrapes):
                answer = await client.get(server.url + "/metrics")
                assert answer.status_code == 200, answer.text
                seen.append(_counters(answer.text))
                await asyncio.sleep(0.02)
            return seen

        return await asyncio.gather(post(), scrape())


def _mysql_user_with_password(backend) -> str:
    """The test database's URL for a user with a password (the startup line must not print it)."""
    url = make_url(backend.url)
    with backend.engine.begin() as connection:
        for host in MYSQL_HOSTS:
            connection.exec_driver_sql(
                f"CREATE USER IF NOT EXISTS 'az_h20_metrics'@'{host}' IDENTIFIED BY '{METRICS_DB_PASSWORD}'"
            )
            connection.exec_driver_sql(f"GRANT ALL ON `{url.database}`.* TO 'az_h20_metrics'@'{host}'")
    return url.set(username="az_h20_metrics", password=METRICS_DB_PASSWORD).render_as_string(hide_password=False)


def test_two_workers_counters_never_go_down_across_scrapes_and_restarts(mysql_backend):
    """Issue 20: with 2 workers, rows_committed_total read 12, 0, 12, 0 on successive scrapes. Every worker
    writes its counters under receiver.metrics_dir and each scrape sums them all."""
    backend = mysql_backend
    add_donation(backend.engine, GUIDE_REF)
    metrics_dir = backend.tmp_path / "metrics"
    settings = config_settings(
        backend,
        **{
            "database.url": _mysql_user_with_password(backend),
            "webhook.password": PASSWORD,
            "receiver.workers": 2,
            "receiver.metrics_dir": str(metrics_dir),
        },
    )
    config = write_config(backend.tmp_path / "serve.yaml", settings)
    sent = 120
    try:
        with ServerProcess(config, workers=2, log_dir=backend.tmp_path / "proc").start() as server:
            statuses, scrapes = asyncio.run(_load_and_scrape(server, [_body(n) for n in range(sent)], 20))
            final = _counters(httpx.get(server.url + "/metrics", timeout=10).text)
            pids = {path.name for path in metrics_dir.glob("counter_*.db")}
        startup = [line for line in server.output().splitlines() if line.startswith("serve: listening on")]
        with ServerProcess(config, workers=2, log_dir=backend.tmp_path / "proc2").start() as again:
            restarted = _counters(httpx.get(again.url + "/metrics", timeout=10).text)
    finally:
        with backend.engine.begin() as connection:
            for host in MYSQL_HOSTS:
                connection.exec_driver_sql(f"DROP USER IF EXISTS 'az_h20_metrics'@'{host}'")
    assert statuses == [200] * sent
    for earlier, later in zip(scrapes, [*scrapes[1:], final], strict=True):
        for series, value in earlier.items():
            assert later.get(series, 0) >= value, (series, value, later.get(series))
    assert final["azamrecon_receiver_rows_committed_total"] == sent
    assert final['azamrecon_receiver_answers_total{code="200"}'] == sent
    assert len(pids) >= 2  # one file per worker: both workers wrote
    for series, value in final.items():  # a restart resets nothing
        assert restarted.get(series, 0) >= value, series
    assert (metrics_dir / "counter_compacted.db").exists()  # the exited workers' files, folded into one
    assert startup == [
        f"serve: listening on http://127.0.0.1:{server.port} with 2 worker(s), database "
        + make_url(settings["database.url"]).render_as_string(hide_password=True)
    ]
    assert METRICS_DB_PASSWORD not in server.output() + again.output()

"""azamrecon serve: the callback receiver on uvicorn."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path

import click
from sqlalchemy.engine import make_url

from jobs.commands.common import Context, pass_context
from pipeline.errors import ConfigError, InputError


def _check_listen(host: str, port: int) -> None:
    """Fail with one line, before uvicorn starts, when the address cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    probe = socket.socket(family, kind, proto)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    finally:
        probe.close()


def _metrics_dir(path: str) -> None:
    """Every worker writes its counters under receiver.metrics_dir (prometheus_client's multiprocess mode), so
    any worker's /metrics sums them all. Set before a worker (or this process) imports prometheus_client."""
    directory = Path(path).resolve()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    from receiver.metrics import prepare_dir

    try:
        prepare_dir(directory)
    except OSError as exc:
        raise ConfigError(
            f"invalid config value for receiver.metrics_dir: cannot use {path}: {exc.strerror or exc}"
        ) from None


@click.command()
@click.option("--host", default=None, help="Interface to listen on (default: receiver.host).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (default: receiver.port).")
@click.option(
    "--workers", type=click.IntRange(1, 64), default=None, help="Worker processes (default: receiver.workers)."
)
@pass_context
def serve(ctx: Context, host: str | None, port: int | None, workers: int | None) -> None:
    """Run the AzamPay callback receiver (HTTP)."""
    import uvicorn

    from pipeline.auth import Authenticator
    from pipeline.logs import configure_logging, secrets_of

    config = ctx.config
    ctx.require_database()  # before the spool, key and log directory are created
    host = host or config.receiver.host
    port = config.receiver.port if port is None else port
    workers = workers or config.receiver.workers
    Authenticator.from_config(config.webhook)  # a bad key or network is a one-line ConfigError now, not in a worker
    try:
        Path(config.receiver.spool_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"invalid config value for receiver.spool_dir: cannot create {config.receiver.spool_dir}: {exc.strerror}"
        ) from None
    _check_listen(host, port)
    configure_logging(config.logging, component="receiver", secrets=secrets_of(config))
    if workers > 1 and config.database.url.startswith("sqlite"):
        from loguru import logger

        # SQLite's busy handler is not a queue: a worker that finds the write lock taken sleeps and retries,
        # and under load another worker keeps winning (bench.receiver --workers 2 measures it)
        logger.warning(
            "serve: {} worker processes on SQLite take turns at its one write lock and a worker can wait seconds "
            "for it under load; one worker commits for all concurrent callbacks (group commit): use --workers 1 "
            "on SQLite, several on MySQL/MariaDB",
            workers,
        )
    if ctx.config_path:
        # the worker processes (and the factory) read the same file
        os.environ["AZAMRECON_CONFIG"] = str(Path(ctx.config_path).resolve())
    if ctx.env_file:
        # the worker processes (and the factory) read the same env file
        os.environ["AZAMRECON_ENV_FILE"] = str(Path(ctx.env_file).resolve())
    _metrics_dir(config.receiver.metrics_dir)
    url = make_url(config.database.url).render_as_string(hide_password=True)  # what engine.url renders
    # stdout, unconditionally: the journal's record of what this receiver serves, whatever the log settings
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"serve: listening on http://{shown}:{port} with {workers} worker(s), database {url}")
    sys.stdout.flush()
    uvicorn.run(
        "receiver.app:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http="receiver.http:CoalescingHttpToolsProtocol" if importlib.util.find_spec("httptools") else "h11",
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        access_log=False,
        # X-Forwarded-For is believed only from webhook.trusted_proxies (pipeline.auth); uvicorn's own proxy
        # handling would otherwise believe it from any 127.0.0.1 peer, bypassing webhook.allowed_ips
        proxy_headers=False,
        log_level="warning",
        lifespan="on",  # also hands receiver.http its read timeouts (receiver/http.py)
        timeout_graceful_shutdown=15,
        server_header=False,
        ws="none",  # no WebSocket endpoint: an upgrade request is plain HTTP
        timeout_keep_alive=config.receiver.keep_alive_timeout_seconds,
        # open connections (and requests in progress) per worker; past it uvicorn answers 503 without
        # reading the request: slow clients are cut by the read timeouts long before that
        limit_concurrency=config.receiver.max_connections,
    )

"""Helpers to run real azamrecon processes in tests: free ports, config files, `azamrecon serve` subprocesses.

Everything is loopback-only and bounded in time: start waits at most `timeout` seconds, stop sends
SIGTERM, waits, then kills.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC
from pathlib import Path
from typing import Any

from pipeline.config import write_config_file as write_config  # noqa: F401  (re-exported for tests/benches)
from sandbox.testing import free_port, stop_process_group, wait_healthy

REPO = Path(__file__).resolve().parents[1]
CALLBACK_PATH = "/api/v1.0/donors/payment/azampay/callback/"


def config_settings(backend, **overrides) -> dict[str, Any]:
    """Dotted settings for a subprocess on the test backend (database, logs and spool under its tmp dir)."""
    settings = {
        "database.url": backend.url,
        "logging.dir": str(backend.tmp_path / "logs"),
        "receiver.spool_dir": str(backend.tmp_path / "spool"),
        "privacy.key_file": str(backend.tmp_path / "azamrecon.key"),
    }
    settings.update(overrides)
    return settings


class ServerProcess:
    """`python -m jobs.cli serve --config FILE --host 127.0.0.1 --port N` as a subprocess."""

    def __init__(
        self,
        config_path: Path,
        port: int | None = None,
        workers: int = 1,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
    ):
        self.config_path = Path(config_path)
        self.port = port or free_port()
        self.workers = workers
        self.env = {**os.environ, **(env or {})}
        self.env.pop("AZAMRECON_CONFIG", None)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.log_dir = Path(log_dir or self.config_path.parent)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def callback_url(self) -> str:
        return self.url + CALLBACK_PATH

    def output(self) -> str:
        parts = []
        for name in ("server.stdout", "server.stderr"):
            path = self.log_dir / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def start(self, timeout: float = 20.0, require_healthy: bool = True) -> ServerProcess:
        """Start and wait until /healthz answers (200, or any answer when require_healthy is False)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "jobs.cli",
            "serve",
            "--config",
            str(self.config_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env=self.env,
            stdout=open(self.log_dir / "server.stdout", "wb"),
            stderr=open(self.log_dir / "server.stderr", "wb"),
            start_new_session=True,
        )
        problem = wait_healthy(self.url, self.process, timeout, require_healthy)
        if problem is None:
            return self
        self.stop()
        raise RuntimeError(f"serve {problem}:\n{self.output()[-3000:]}")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the process group, wait up to `timeout`, then SIGKILL. Returns the exit code."""
        process = self.process
        if process is None:
            return None
        return stop_process_group(process, timeout)

    def __enter__(self) -> ServerProcess:
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def run_cli(
    *args: str, config_path: Path | None = None, timeout: float = 60.0, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m jobs.cli ARGS [--config FILE]` and return the completed process (text output)."""
    command = [sys.executable, "-m", "jobs.cli", *args]
    if config_path is not None:
        command += ["--config", str(config_path)]
    full_env = {**os.environ, **(env or {})}
    full_env.pop("AZAMRECON_CONFIG", None)
    return subprocess.run(command, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


# --- small database helpers shared by the receiver and spool tests ---------------------------------


def add_donation(
    engine,
    reference: str | None,
    donation_id: int | None = None,
    transaction_id: str | None = None,
    amount: str = "1000",
    msisdn: str = "255789123456",
    provider: str = "Mpesa",
) -> int:
    """Insert a PENDING donation with this external_reference (directly, so any id/reference works)."""
    from datetime import datetime

    from pipeline.db import transaction
    from pipeline.models import Donation
    from tests.builders import pending_donation

    with transaction(engine) as session:
        created_at = datetime(2025, 12, 19, 12, 0, tzinfo=UTC)
        donation = Donation(
            id=donation_id, **pending_donation(reference, created_at, amount, transaction_id, msisdn, provider)
        )
        session.add(donation)
        session.flush()
        return donation.id


def event_rows(engine) -> list:
    """Every payment_events row, oldest first, as SQLAlchemy rows (attribute access by column name)."""
    from sqlalchemy import select

    from pipeline.models import PaymentEvent

    with engine.connect() as connection:
        return list(connection.execute(select(PaymentEvent.__table__).order_by(PaymentEvent.id)))

"""`azamrecon demo`: the whole system on one machine, on SQLite, in a fresh folder, in under a minute.

It starts the AzamPay sandbox (in this process), `azamrecon serve` and `azamrecon scheduler` (as real
subprocesses) on 127.0.0.1, creates patients and donations through the real checkout path, and walks
through six scenarios. Then it prints the report and `rebuild --check`, stops everything it started and
exits 0 only if every scenario ended as expected and the rebuild matches the live state.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import yaml

from pipeline.config import ENV_OVERRIDES
from pipeline.fold import Status
from sandbox.testing import stop_process_group

WEBHOOK_PASSWORD = "demo-webhook-password"

# Every name the config layer reads from the environment: ENV_OVERRIDES beat any --config file,
# AZAMRECON_CONFIG picks the file when none is named and AZAMRECON_ENV_FILE adds a systemd env file's values
# (pipeline.config.load_config). An operator's shell
# often has the production values loaded (docs/deploy.md), and the demo's children must not see them,
# or `serve` and `scheduler` would write sandbox callbacks into the production database and poll the
# real AzamPay.
CONFIG_ENV_NAMES = frozenset({*ENV_OVERRIDES, "AZAMRECON_CONFIG", "AZAMRECON_ENV_FILE"})


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the demo's subprocesses: the caller's (PATH, locale, HOME, ...) minus config."""
    environ = os.environ if environ is None else environ
    return {name: value for name, value in environ.items() if name not in CONFIG_ENV_NAMES}


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def loopback_without_proxy(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """NO_PROXY and no_proxy with the loopback hosts added. Everything the demo talks to (the sandbox,
    serve) is on loopback; a proxy from the operator's shell (HTTP_PROXY, often set on office machines)
    would otherwise carry those requests, and the demo failed with ProxyError."""
    environ = os.environ if environ is None else environ
    updated = {}
    for name in ("NO_PROXY", "no_proxy"):
        hosts = [host.strip() for host in environ.get(name, "").split(",") if host.strip()]
        updated[name] = ",".join(hosts + [host for host in LOOPBACK_HOSTS if host not in hosts])
    return updated


def config_from_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """The config names set (non-empty) in the environment, which the demo ignores."""
    environ = os.environ if environ is None else environ
    return sorted(name for name in CONFIG_ENV_NAMES if environ.get(name))


@dataclass(frozen=True)
class Scenario:
    name: str
    outcome: str  # the sandbox outcome
    msisdn: str
    expected: Status  # donation status at the end
    expected_anomaly: str | None
    story: str


SCENARIOS = (
    Scenario(
        "success",
        "success",
        "0758000001",
        Status.COMPLETED,
        None,
        "callback arrives, donation COMPLETED, patient credited",
    ),
    Scenario("failure", "failure", "0758000002", Status.FAILED, None, "callback says failure"),
    Scenario(
        "duplicate", "duplicate", "0758000003", Status.COMPLETED, "duplicate", "callback sent twice, credited once"
    ),
    Scenario(
        "no callback -> poll",
        "no_callback",
        "0758000004",
        Status.COMPLETED,
        None,
        "no callback; the poller asks AzamPay after the threshold",
    ),
    Scenario(
        "forged",
        "forged",
        "0758000005",
        Status.COMPLETED,
        "unauthenticated",
        "callback with a wrong password is stored but not trusted; the poll decides",
    ),
    Scenario(
        "amount mismatch",
        "amount_mismatch",
        "0758000006",
        Status.REVIEW,
        "amount_mismatch",
        "callback amount differs: REVIEW, nothing credited",
    ),
)


def write_config(folder: Path, receiver_port: int, sandbox_url: str, sandbox_settings) -> Path:
    config = {
        "database": {"url": f"sqlite:///{folder / 'azamrecon.db'}"},
        "azampay": {
            "auth_url": sandbox_url,
            "checkout_url": sandbox_url,
            "client_id": sandbox_settings.client_id,
            "client_secret": sandbox_settings.client_secret,
            "api_key": sandbox_settings.api_key,
            "timeout_connect": 2,
            "timeout_read": 5,
        },
        "webhook": {"password": WEBHOOK_PASSWORD},
        "receiver": {"host": "127.0.0.1", "port": receiver_port, "spool_dir": str(folder / "spool")},
        # a demo cannot wait 10 minutes: a donation counts as stuck after 3 seconds, and is polled every 2
        "poll": {"threshold_minutes": 0.05, "backoff_base_minutes": 0.05},
        "scheduler": {"poll_interval_seconds": 2, "spool_interval_seconds": 5},
        "logging": {"dir": str(folder / "logs")},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.contextmanager
def _process(name: str, args: list[str], folder: Path, say: Callable[[str], None]) -> Iterator[subprocess.Popen]:
    log = open(folder / f"{name}.out", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=folder,
        env=child_environment(),
        start_new_session=True,
    )
    say(f"started {name} (pid {process.pid})")
    try:
        yield process
    finally:
        stop_process_group(process, timeout=10)
        log.close()
        say(f"stopped {name}")


def run_demo(folder: Path, say: Callable[[str], None] = print, deadline_seconds: float = 45.0) -> int:
    from pipeline.azampay import AzamPayClient
    from pipeline.checkout import initiate_checkout
    from pipeline.config import load_config
    from pipeline.db import make_engine, transaction
    from pipeline.errors import AzamreconError
    from pipeline.models import Anomaly, Donation
    from pipeline.schema import upgrade
    from pipeline.store.donations import create_patient
    from sandbox.testing import free_port, running_sandbox, wait_healthy

    folder.mkdir(parents=True, exist_ok=False)
    port = free_port()
    callback_url = f"http://127.0.0.1:{port}/api/v1.0/donors/payment/azampay/callback/"
    outcomes = {scenario.msisdn: scenario.outcome for scenario in SCENARIOS}
    with running_sandbox(callback_url=callback_url, webhook_password=WEBHOOK_PASSWORD, outcomes=outcomes) as sandbox:
        say(f"sandbox AzamPay at {sandbox.url}")
        config_path = write_config(folder, port, sandbox.url, sandbox.settings)
        config = load_config(config_path, environ={})
        engine = make_engine(config.database)
        upgrade(engine)
        say(f"database {config.database.url}")
        cli = ["--config", str(config_path)]
        with _process("serve", ["serve", *cli], folder, say) as server:
            problem = wait_healthy(f"http://127.0.0.1:{port}", server, 20)
            if problem is not None:
                raise AzamreconError(f"demo: the receiver {problem}; see {folder / 'serve.out'}")
            with _process("scheduler", ["scheduler", *cli], folder, say):
                now = datetime.now(UTC)
                with transaction(engine) as session:
                    amina = create_patient(
                        session, name="Amina (heart surgery)", funding_required=Decimal("60000"), now=now
                    ).id
                    baraka = create_patient(
                        session, name="Baraka (physiotherapy)", funding_required=Decimal("200000"), now=now
                    ).id
                say(f"patients {amina} and {baraka} need 60,000 and 200,000 TZS")
                created: dict[str, int] = {}
                with AzamPayClient(config.azampay) as client:
                    for number, scenario in enumerate(SCENARIOS):
                        patient = amina if number % 2 == 0 else baraka
                        result = initiate_checkout(
                            engine,
                            config,
                            client,
                            patient_id=patient,
                            amount=Decimal("25000"),
                            msisdn=scenario.msisdn,
                            provider="Mpesa",
                            now=datetime.now(UTC),
                        )
                        created[scenario.name] = result.donation_id
                        say(
                            f"donation {result.donation_id} ({scenario.name}): checkout {result.event_status}, {scenario.story}"
                        )
                say("waiting for callbacks, folds and polls ...")
                finished = _wait_for(engine, created, deadline_seconds)
                with transaction(engine) as session:
                    rows = []
                    for scenario in SCENARIOS:
                        donation = session.get(Donation, created[scenario.name])
                        kinds = sorted({a.kind for a in session.query(Anomaly).filter_by(donation_id=donation.id)})
                        ok = donation.status == scenario.expected and (
                            scenario.expected_anomaly is None or scenario.expected_anomaly in kinds
                        )
                        rows.append((scenario, donation, kinds, ok))
        say("")
        say(f"{'scenario':<22}{'donation':>9}  {'expected':<10}{'got':<10}anomalies")
        for scenario, donation, kinds, ok in rows:
            say(
                f"{scenario.name:<22}{donation.id:>9}  {scenario.expected:<10}{donation.status:<10}{', '.join(kinds) or '-'}  {'ok' if ok else 'MISMATCH'}"
            )
        say("")
        env = child_environment()
        report = subprocess.run(
            [sys.executable, "-m", "jobs.cli", "report", *cli],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        say(report.stdout.rstrip())
        check = subprocess.run(
            [sys.executable, "-m", "jobs.cli", "rebuild", "--check", "--no-progress", *cli],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        say(check.stdout.rstrip())
        engine.dispose()
    all_ok = finished and all(ok for *_, ok in rows)
    say("")
    say(f'logs: {folder / "logs"} (grep "completed successfully" {folder / "logs" / "payments.log"})')
    if all_ok and check.returncode == 0:
        say("demo: every scenario ended as expected and the rebuild equals the live state")
        return 0
    say("demo: FAILED — see the table above" + ("" if check.returncode == 0 else " and the rebuild differences"))
    return 1


def _wait_for(engine, created: dict[str, int], timeout: float) -> bool:
    from pipeline.db import transaction
    from pipeline.models import Donation

    expected = {created[s.name]: s.expected for s in SCENARIOS}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with transaction(engine) as session:
            statuses = dict(session.query(Donation.id, Donation.status).filter(Donation.id.in_(expected)).all())
        if statuses == expected:
            return True
        time.sleep(0.25)
    return False

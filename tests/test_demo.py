"""`azamrecon demo` end to end: real serve + scheduler subprocesses, the sandbox, SQLite; bounded."""

import os
import subprocess
import sys
import time
from pathlib import Path

from sandbox.testing import free_port


def test_demo_walks_every_scenario_and_stops_what_it_started(tmp_path):
    folder = tmp_path / "demo"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "demo", "--dir", str(folder)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for name in ("success", "failure", "duplicate", "no callback -> poll", "forged", "amount mismatch"):
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert line.rstrip().endswith("ok"), line
    assert "rebuild --check: 0 difference(s)" in out
    assert "stopped serve" in out and "stopped scheduler" in out
    assert elapsed < 60
    payments = (folder / "logs" / "payments.log").read_text()
    assert "completed successfully" in payments and "payment failed" in payments
    assert "demo-webhook-password" not in payments
    # nothing left running: the demo's subprocesses wrote their pids nowhere, so check none still serve its folder
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(folder / "config.yaml") not in ps


def test_demo_ignores_a_production_environment(tmp_path):
    """An operator's shell with the production env sourced (docs/deploy.md): the demo's serve, scheduler,
    report and rebuild must still run on the demo's own SQLite file and sandbox, and never open the decoys."""
    decoys = tmp_path / "production"
    decoys.mkdir()
    production_config = decoys / "config.yaml"
    production_config.write_text(f"database: {{url: 'sqlite:///{decoys / 'from-config-file.db'}'}}\n")
    closed = free_port()  # loopback, nothing listens: a leaked AzamPay URL fails instead of reaching anything
    env = {
        **os.environ,
        "AZAMRECON_CONFIG": str(production_config),
        "DATABASE_URL": f"sqlite:///{decoys / 'production.db'}",
        "TOKEN": "production-token",
        "AZAM_PAY_AUTH": f"http://127.0.0.1:{closed}",
        "AZAM_PAY_CHECKOUT_URL": f"http://127.0.0.1:{closed}",
        "AZAM_PAY_CLIENT_ID": "production-client",
        "AZAM_PAY_CLIENT_SECRET": "production-secret",
        "AZAM_PAY_WEBHOOK_PASSWORD": "production-webhook-password",
        # an office machine's proxy, which cannot reach the demo's loopback services
        "HTTP_PROXY": f"http://127.0.0.1:{closed}",
        "HTTPS_PROXY": f"http://127.0.0.1:{closed}",
        "http_proxy": f"http://127.0.0.1:{closed}",
        "ALL_PROXY": f"http://127.0.0.1:{closed}",
        "NO_PROXY": "intranet.example",
    }
    folder = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "demo", "--dir", str(folder), "--config", str(production_config)],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sorted(p.name for p in decoys.iterdir()) == ["config.yaml"], "the demo opened a production database"
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"sqlite:///{folder / 'azamrecon.db'}" in result.stdout
    assert "rebuild --check: 0 difference(s)" in result.stdout
    assert f"note: demo ignores --config {production_config}" in result.stderr
    assert "production-token" not in result.stdout + result.stderr

"""`azamrecon demo` end to end: real serve + scheduler subprocesses, the sandbox, SQLite; bounded."""
import subprocess
import sys
import time
from pathlib import Path


def test_demo_walks_every_scenario_and_stops_what_it_started(tmp_path):
    folder = tmp_path / "demo"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "demo", "--dir", str(folder)],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120,
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

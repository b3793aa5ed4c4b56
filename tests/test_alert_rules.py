"""deploy/prometheus/azamrecon-alerts.yml: Prometheus accepts it, and every series it reads is one /metrics serves."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import UTC, datetime

import yaml

from jobs.fold import run_fold
from jobs.runs import recorded_run
from tests.servers import REPO

RULES = REPO / "deploy" / "prometheus" / "azamrecon-alerts.yml"
SELECTOR = re.compile(r"\b(azamrecon_[a-z_]+)(?:\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)="([^"]*)"')


def _rules() -> list[dict]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_prometheus_accepts_the_rules():
    promtool = shutil.which("promtool")
    # Debian's `prometheus` package ships it; .ci/run installs it, so under CI its absence is a failure
    assert promtool is not None or os.environ.get("CI") != "true", (
        "promtool is not installed (apt-get install prometheus)"
    )
    if promtool is not None:
        done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"SUCCESS: {len(_rules())} rules found" in done.stdout
    rules = _rules()
    assert {rule["alert"] for rule in rules} >= {
        "AzamreconFoldStale",
        "AzamreconFoldLag",
        "AzamreconSpoolNotEmpty",
        "AzamreconInvariantViolated",
        "AzamreconReview",
        "AzamreconStuckPending",
    }
    for rule in rules:
        assert rule["expr"].strip() and rule["labels"]["severity"] in ("warning", "critical")


def test_every_series_the_rules_read_is_served(sqlite_backend):
    from receiver.metrics import render

    now = datetime.now(UTC)
    run_fold(sqlite_backend.engine, sqlite_backend.config(), now)
    with recorded_run(sqlite_backend.engine, "poll", now):
        pass
    served = render(sqlite_backend.engine, sqlite_backend.config(), None, now)
    series = [line.split(" ")[0] for line in served.splitlines() if line and not line.startswith("#")]
    used = [match for rule in _rules() for match in SELECTOR.findall(rule["expr"])]
    assert {name for name, _ in used} >= {"azamrecon_fold_lag_seconds", "azamrecon_alert_threshold"}
    for name, matchers in used:
        wanted = MATCHER.findall(matchers)
        found = [
            line
            for line in series
            if line.split("{")[0] == name and all(f'{label}="{value}"' in line for label, value in wanted)
        ]
        assert found, f"{name}{{{matchers}}} is used by an alert rule and not served by /metrics"

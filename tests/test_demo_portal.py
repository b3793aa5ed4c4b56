"""`make demo-portal` end to end: Django's portal tables, `azamrecon init` and `serve`, the sandbox, SQLite; bounded."""

import os
import subprocess
import sys
import time
from pathlib import Path

from sandbox.testing import free_port

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("donor_donation", "auth_app_patientprofile")


def run_demo(folder: Path, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tests.portal_django.demo", "--dir", str(folder)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    return result, time.monotonic() - started


def blocks(out: str) -> dict[str, list[str]]:
    """The demo's output by block: "step N" or "final" -> the lines under that heading."""
    found: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("step ") or line.startswith("final:"):
            current = "final" if line.startswith("final:") else f"step {line.split()[1]}"
            found[current] = [line]
        elif current is not None and line.startswith("  "):
            found[current].append(line)
        else:
            current = None
    return found


def rows(lines: list[str]) -> dict[str, dict[int, tuple[str, list[str]]]]:
    """table -> {id: (mark, cells)} from a block's printed tables (mark "+" new, "*" changed, "" neither)."""
    tables: dict[str, dict[int, tuple[str, list[str]]]] = {}
    table = None
    for line in lines[1:]:
        words = line.split()
        if line.strip() in TABLES:
            table = line.strip()
            tables[table] = {}
        elif table is not None and words[0] != "id":
            mark = words.pop(0) if words[0] in ("+", "*") else ""
            tables[table][int(words[0])] = (mark, words)
    return tables


def test_demo_portal_prints_the_portal_rows_as_they_change_and_stops_what_it_started(tmp_path):
    folder = tmp_path / "demo"
    result, elapsed = run_demo(folder)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert elapsed < 30
    out = result.stdout
    assert "demo-portal: every portal row ended as expected" in out
    steps = blocks(out)

    final = rows(steps["final"])
    donations = {i: (cells[1], cells[4]) for i, (_, cells) in final["donor_donation"].items()}
    assert donations == {
        1: ("COMPLETED", "TZS"),  # Bill Pay: the portal's own, never written
        2: ("COMPLETED", "TZS"),
        3: ("REFUNDED", "TZS"),
        4: ("COMPLETED", "KES"),
        5: ("FAILED", "TZS"),
    }
    patients = {i: (cells[1], cells[3], cells[5]) for i, (_, cells) in final["auth_app_patientprofile"].items()}
    # Amina: donation 2 only (the KES one is not counted); Baraka: Bill Pay, donation 3 refunded
    assert patients == {1: ("Amina", "60000.00", "FULLY_FUNDED"), 2: ("Baraka", "30000.00", "FULLY_FUNDED")}
    # AzamPay's reference went into the empty gateway_reference of the donations azamrecon completed
    assert final["donor_donation"][2][1][6] != "-" and final["donor_donation"][1][1][6] == "-"
    assert final["donor_donation"][2][1][5].startswith("RHCI-DN-2-")  # the portal's externalId, kept

    # a callback alone changes no portal row; the next fold does, and marks what it changed
    callback = next(lines for lines in steps.values() if "a callback for donation 2 arrives" in lines[0])
    assert "(HTTP 200)" in callback[0] and [line.strip() for line in callback[1:]] == [
        "(the portal's rows are unchanged)"
    ]
    folded = rows(next(lines for lines in steps.values() if "the fold writes COMPLETED" in lines[0]))
    assert folded["donor_donation"][2][0] == "*" and folded["donor_donation"][2][1][1] == "COMPLETED"
    assert folded["donor_donation"][1][0] == ""  # the Bill Pay row is untouched
    assert folded["auth_app_patientprofile"][1][0] == "*"
    refund = rows(next(lines for lines in steps.values() if "staff refund donation 3" in lines[0]))
    mark, cells = refund["donor_donation"][3]
    assert mark == "*" and cells[1] == "REFUNDED"
    assert "auth_app_patientprofile" not in refund  # the admin's save() touches no patient

    assert "currency_mismatch (donation 4)" in out
    assert "stopped serve" in out
    assert "demo-portal-webhook-password" not in (folder / "logs" / "payments.log").read_text()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(folder / "config.yaml") not in ps  # serve stopped


def test_demo_portal_ignores_a_production_environment(tmp_path):
    """An operator's shell with the production env sourced: the demo still runs on its own files only."""
    decoys = tmp_path / "production"
    decoys.mkdir()
    production_config = decoys / "config.yaml"
    production_config.write_text(f"database: {{url: 'sqlite:///{decoys / 'from-config-file.db'}'}}\n")
    closed = free_port()  # loopback, nothing listens: a leaked URL or proxy fails instead of reaching anything
    env = {
        **os.environ,
        "AZAMRECON_CONFIG": str(production_config),
        "DATABASE_URL": f"sqlite:///{decoys / 'production.db'}",
        "AZAM_PAY_AUTH": f"http://127.0.0.1:{closed}",
        "AZAM_PAY_CHECKOUT_URL": f"http://127.0.0.1:{closed}",
        "AZAM_PAY_WEBHOOK_PASSWORD": "production-webhook-password",
        "HTTP_PROXY": f"http://127.0.0.1:{closed}",
        "http_proxy": f"http://127.0.0.1:{closed}",
        "NO_PROXY": "intranet.example",
    }
    result, _ = run_demo(tmp_path / "demo", env)
    assert sorted(p.name for p in decoys.iterdir()) == ["config.yaml"], "the demo opened a production database"
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"portal database {tmp_path / 'demo' / 'portal.sqlite3'}" in result.stdout

"""The shipped deploy files (deploy/): systemd units, the nginx snippet, the cron line and the examples.

`systemd-analyze verify` and `nginx -t` run when the tool is installed; otherwise the test is skipped
with the reason, except under CI=true, where a missing tool fails (CI installs systemd and nginx).

systemd-analyze verify checks that ExecStart's program exists and is executable, and the units name the
production path /opt/azamrecon/.venv/bin/azamrecon. The test verifies copies of the units in a
temporary directory with that path rewritten to this checkout's .venv/bin/azamrecon (which exists): the
rest of each unit is verified as shipped. verify does not check User=, EnvironmentFile= or
ReadWritePaths= against this machine, so nothing else needs to exist.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.envfile import read_env_file
from tests.servers import REPO

DEPLOY = REPO / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
TIMERS = sorted((DEPLOY / "systemd").glob("*.timer"))
SNIPPET = DEPLOY / "nginx" / "azamrecon.conf"
PRODUCTION_BINARY = "/opt/azamrecon/.venv/bin/azamrecon"
HARDENING = ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "UMask=0027")
WRITABLE = ("/var/lib/azamrecon", "/var/log/azamrecon", "/var/spool/azamrecon", "/var/lib/azamrecon/metrics")
CALLBACK = "/api/v1.0/donors/payment/azampay/callback/"


def tool(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )
    if found is None:
        message = f"{name} is not installed (Debian: apt-get install {'nginx' if name == 'nginx' else 'systemd'})"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI must install it")
        pytest.skip(message)
    return found


def directives(unit: Path) -> list[str]:
    return [line.strip() for line in unit.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_the_units_are_shipped():
    names = {unit.name for unit in UNITS + TIMERS}
    assert {"azamrecon-receiver.service", "azamrecon-scheduler.service", "azamrecon-check.service"} <= names
    assert "azamrecon-check.timer" in names


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_units_are_hardened_and_leave_the_worker_count_to_config(unit):
    lines = directives(unit)
    for directive in HARDENING:
        assert directive in lines, f"{unit.name}: {directive}"
    [writable] = [line for line in lines if line.startswith("ReadWritePaths=")]
    assert writable.split("=", 1)[1].split() == list(WRITABLE)
    assert "EnvironmentFile=/etc/azamrecon/azamrecon.env" in lines
    [start] = [line for line in lines if line.startswith("ExecStart=")]
    assert start.startswith(f"ExecStart={PRODUCTION_BINARY} ")
    assert not any("--workers" in line for line in lines)


def test_systemd_analyze_verify(tmp_path):
    analyze = tool("systemd-analyze")
    for unit in UNITS + TIMERS:
        text = unit.read_text()
        (tmp_path / unit.name).write_text(
            text.replace(PRODUCTION_BINARY, str(Path(sys.executable).parent / "azamrecon"))
        )
    assert (Path(sys.executable).parent / "azamrecon").exists()
    done = subprocess.run(
        [analyze, "verify", *(str(tmp_path / unit.name) for unit in UNITS + TIMERS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 on unknown keys and bad values ("ignoring"): any output is a failure too
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path):
    """The check above can fail: a misspelt value is reported."""
    analyze = tool("systemd-analyze")
    broken = tmp_path / "azamrecon-broken.service"
    broken.write_text("[Service]\nExecStart=/bin/true\nProtectSystem=stricter\n")
    done = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert "stricter" in done.stdout + done.stderr


def nginx_conf(tmp_path: Path, inside: str) -> Path:
    """A minimal nginx.conf whose existing server block includes `inside`; every path under tmp_path, so
    `nginx -t` runs as any user."""
    temp = "".join(
        f" {name}_temp_path {tmp_path / name};" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path / 'nginx.pid'};\n"
        f"error_log {tmp_path / 'error.log'};\n"
        "events {}\n"
        "http {\n"
        f"  access_log off;{temp}\n"
        "  server {\n"
        "    listen 127.0.0.1:18080;\n"
        "    server_name portal.example;\n"
        '    location / { return 200 "the portal"; }\n'
        f"    include {inside};\n"
        "  }\n"
        "}\n"
    )
    return conf


def nginx_test(tmp_path: Path, snippet: Path) -> subprocess.CompletedProcess:
    nginx = tool("nginx")
    conf = nginx_conf(tmp_path, str(snippet))
    return subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_nginx_accepts_the_snippet_inside_an_existing_server_block(tmp_path):
    done = nginx_test(tmp_path, SNIPPET)
    assert done.returncode == 0 and "test is successful" in done.stderr, done.stderr


def test_nginx_check_can_fail(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text(SNIPPET.read_text().replace("proxy_read_timeout 60s;", "proxy_read_timeout;"))
    assert nginx_test(tmp_path, bad).returncode != 0


def test_the_snippet_is_one_exact_location_for_the_callback():
    lines = directives(SNIPPET)
    assert [line for line in lines if line.startswith("location")] == [f"location = {CALLBACK} {{"]
    assert not any(line.startswith(("server", "upstream", "add_header")) for line in lines)  # no CORS either
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in lines


def test_the_cron_line_mails_only_problems():
    text = (DEPLOY / "cron" / "azamrecon-check").read_text()
    lines = directives(DEPLOY / "cron" / "azamrecon-check")
    assert any(line.startswith("MAILTO=") for line in lines)
    [job] = [line for line in lines if line.startswith("*/5 ")]
    assert "--env-file /etc/azamrecon/azamrecon.env report --check" in job
    assert job.split()[5] == "azamrecon"  # cron.d: the user column
    assert "%" not in text.split("MAILTO", 1)[1]  # cron reads % as a newline


def test_the_examples_load(tmp_path):
    """The example env file (systemd syntax) and config.yaml are valid, and say what the guide says."""
    env = read_env_file(DEPLOY / "azamrecon.env.example")
    assert env["AZAMRECON_CONFIG"] == "/etc/azamrecon/config.yaml" and "AZAMPAY_VENDOR_ID" not in env
    config = load_config(DEPLOY / "config.yaml.example", environ={}, env_file=DEPLOY / "azamrecon.env.example")
    assert config.database.url.startswith("mysql+pymysql://azamrecon:")
    assert config.receiver.workers == 4 and config.receiver.checkout_api_key.get_secret_value()
    assert config.azampay.environment == "production"
    paths = (config.logging.dir, config.receiver.spool_dir, config.receiver.metrics_dir, config.privacy.key_file)
    assert all(path.startswith(WRITABLE) for path in paths), paths


def test_deploy_md_names_only_files_that_exist():
    text = (REPO / "docs" / "deploy.md").read_text()
    named = set(re.findall(r"deploy/[\w./-]+[\w]", text))
    assert {"deploy/nginx/azamrecon.conf", "deploy/systemd/azamrecon-receiver.service"} <= named
    missing = [name for name in named if not (REPO / name).exists()]
    assert not missing, missing

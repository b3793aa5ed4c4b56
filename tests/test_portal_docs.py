"""docs/portal.md followed as written, on a database the test Django portal migrated: init, adopt, shadow mode
behind the receiver, the cutover to portal.write, `portal apply`, and `portal diff` clean; no portal table altered
(SHOW CREATE TABLE before and after)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import httpx
import yaml

from tests.portal_fixtures import show_create
from tests.portal_mode_helpers import azampay_callback
from tests.servers import ServerProcess, run_cli, write_config
from tests.test_scheduler import scheduler_process, wait_until

DOC = (Path(__file__).resolve().parents[1] / "docs" / "portal.md").read_text(encoding="utf-8")
PASSWORD = "docs-webhook-password"


def _step3_config() -> dict:
    """The config.yaml of the chapter's step 3, as dotted keys."""
    section = DOC[DOC.index("### 3. config.yaml and init") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    return {f"{top}.{key}": value for top, values in yaml.safe_load(block).items() for key, value in values.items()}


def _config(portal_db, tmp_path, **changes) -> Path:
    settings = {
        **_step3_config(),
        "database.url": portal_db.url,
        "logging.dir": str(tmp_path / "logs"),
        "receiver.spool_dir": str(tmp_path / "spool"),
        "privacy.key_file": str(tmp_path / "azamrecon.key"),
        "webhook.password": PASSWORD,  # step 1
        "scheduler.fold_interval_seconds": 0.2,
        **changes,
    }
    return write_config(tmp_path / "config.yaml", settings)


def _diff(config) -> list[dict]:
    done = run_cli("portal", "diff", "--format", "json", config_path=config)
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def test_following_docs_portal_md_gives_a_working_system_and_alters_no_portal_table(portal_db, tmp_path):
    before = show_create(portal_db)
    patient = portal_db.create_patient("Asha", 3000)
    past = portal_db.create_donation(patient, amount=1000)  # the portal's past: paid an hour after creation
    portal_db.checkout_saved(past)
    row = portal_db.read_donation(past.id)
    type(row).objects.using(portal_db.alias).filter(pk=past.id).update(
        status="COMPLETED", completed_at=row.created_at + timedelta(hours=1)
    )
    config = _config(portal_db, tmp_path)
    assert _step3_config()["portal.write"] is False and _step3_config()["database.table_prefix"] == "azamrecon_"
    for step in (("init",), ("portal", "adopt", "--dry-run"), ("portal", "adopt")):  # steps 3 and 4
        done = run_cli(*step, config_path=config)
        assert done.returncode == 0, (step, done.stderr)

    donation = portal_db.create_donation(patient, amount=2000)  # shadow mode, step 5
    external_id = portal_db.checkout_saved(donation)
    with ServerProcess(config, log_dir=tmp_path / "serve") as server, scheduler_process(config):
        answer = httpx.post(
            server.callback_url,
            content=azampay_callback(external_id, 2000, password=PASSWORD),
            headers={"content-type": "application/json"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        assert wait_until(lambda: any(r["id"] == donation.id for r in _diff(config)), 20, 0.5)  # step 6
    assert portal_db.read_donation(donation.id).status == "PENDING"  # shadow mode wrote nothing

    config = _config(portal_db, tmp_path, **{"portal.write": True})  # step 8
    with ServerProcess(config, log_dir=tmp_path / "serve2"), scheduler_process(config, name="scheduler2"):
        done = run_cli("portal", "apply", config_path=config)
        assert done.returncode == 0, done.stderr
        assert wait_until(lambda: portal_db.read_donation(donation.id).status == "COMPLETED", 20, 0.2)
    assert _diff(config) == []
    assert portal_db.read_patient(patient.id).funding_received == 3000
    assert portal_db.read_patient(patient.id).status == "FULLY_FUNDED"
    assert portal_db.read_donation(past.id).completed_at == row.created_at + timedelta(hours=1)
    assert show_create(portal_db) == before  # no portal table altered

"""azamrecon in portal mode on a database the test Django portal migrated (tests/portal_fixtures.py)."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from starlette.testclient import TestClient

from jobs.fold import run_fold
from pipeline.config import load_config
from pipeline.db import make_engine
from pipeline.schema import upgrade
from receiver.app import create_app
from tests.conftest import fixture_bytes

CALLBACK_PATH = "/api/v1.0/donors/payment/azampay/callback/"
JSON = {"content-type": "application/json"}


class PortalMode:
    """azamrecon's config, engine and receiver on the portal's database, and the fold run as the scheduler runs it."""

    def __init__(self, portal_db, tmp_path, **overrides):
        self.portal = portal_db
        values = {
            "database.url": portal_db.url,
            "portal.enabled": True,
            "database.table_prefix": "azamrecon_",  # as docs/portal.md sets it beside the portal's tables
            "logging.dir": str(tmp_path / "logs"),
            "receiver.spool_dir": str(tmp_path / "spool"),
            "privacy.key_file": str(tmp_path / "azamrecon.key"),
        }
        values.update(overrides)
        config_path = tmp_path / "config.yaml"
        config_path.write_text("{}\n")
        self.config = load_config(config_path, environ={}, overrides=values)
        self.engine = make_engine(self.config.database)
        upgrade(self.engine)
        self.clock = datetime.now(UTC)

    def now(self) -> datetime:
        """Later than anything Django stamped with its own clock, and moving forward on every call."""
        self.clock = max(self.clock + timedelta(seconds=1), datetime.now(UTC))
        return self.clock

    def fold(self):
        return run_fold(self.engine, self.config, self.now(), announce=False)

    @contextlib.contextmanager
    def receiver(self):
        with TestClient(create_app(self.config, engine=self.engine), client=("127.0.0.1", 50000)) as client:
            yield client

    def anomalies(self, kind: str) -> list[tuple]:
        with self.engine.connect() as connection:
            return connection.execute(
                text("SELECT donation_id, detail FROM anomalies WHERE kind = :kind ORDER BY id"), {"kind": kind}
            ).all()

    def portal_events(self, donation_id: int) -> list[str]:
        with self.engine.connect() as connection:
            return list(
                connection.execute(
                    text(
                        "SELECT operator FROM payment_events WHERE source = 'portal' AND donation_id = :id ORDER BY id"
                    ),
                    {"id": donation_id},
                ).scalars()
            )

    def cli_settings(self, **changes) -> dict:
        """Dotted keys for a config file the CLI (a subprocess) reads: this mode's database, prefix and folders."""
        config = self.config
        return {
            "database.url": config.database.url,
            "database.table_prefix": config.database.table_prefix,
            "portal.enabled": True,
            "logging.dir": config.logging.dir,
            "privacy.key_file": config.privacy.key_file,
            "receiver.spool_dir": config.receiver.spool_dir,
            **changes,
        }

    def close(self):
        self.engine.dispose()


def azampay_callback(external_id: str, amount, status: str = "success", operator: str = "Halopesa", **changes) -> bytes:
    """AzamPay's live callback shape (password null) for the portal's externalId."""
    data = json.loads(fixture_bytes("callback_live_shape_success.json"))
    data.update(utilityref=external_id, amount=str(amount), transactionstatus=status, operator=operator)
    data.update(changes)
    return json.dumps(data).encode()

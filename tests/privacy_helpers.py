"""What the privacy tests share (tests/test_privacy*.py): the passwords, the key, a callback, the stored text."""

from __future__ import annotations

import contextlib
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from loguru import logger
from sqlalchemy import text

from pipeline.db import transaction
from pipeline.errors import StoreError
from pipeline.events import extract_fields
from pipeline.logs import configure_logging, secrets_of
from pipeline.privacy import PrivacyKey
from pipeline.store.events import append_event, event_row
from tests.conftest import fixture_bytes

JSON = {"content-type": "application/json"}
CURRENT, PREVIOUS, WRONG = "Hook-current-5f1e2d3c", "Hook-previous-9a8b7c6d", "Hook-wrong-00000000"
LEGACY_LOG = Path(__file__).parent / "fixtures" / "legacy" / "payments.log"
LEGACY_PASSWORDS = ("legacy-hook-pw-7781", "wrong-hook-pw-0000")
HASHED = re.compile(r"hmac:[0-9a-f]{16}:\d{3}")


def key_of(seed: int = 1) -> PrivacyKey:
    return PrivacyKey(bytes([seed]) * 32)


def callback(**changes) -> bytes:
    data = json.loads(fixture_bytes("callback_guide_example.json"))
    data.update(changes)
    return json.dumps(data).encode()


def stored_text(backend) -> str:
    """Every value of every row of every table, as one string: "anywhere in the database"."""
    from pipeline.models import metadata

    parts = []
    with backend.engine.connect() as connection:
        for table in metadata.sorted_tables:
            for row in connection.execute(table.select()):
                parts += [
                    bytes(value).decode("utf-8", "replace") if isinstance(value, (bytes, memoryview)) else str(value)
                    for value in row
                ]
    return "\n".join(parts)


def files_text(directory: Path) -> str:
    return "".join(path.read_text(errors="replace") for path in directory.rglob("*") if path.is_file())


@contextlib.contextmanager
def logging_to(config):
    configure_logging(config.logging, component="test", secrets=secrets_of(config), stderr_level=None)
    try:
        yield Path(config.logging.dir)
    finally:
        logger.remove()


def pre_upgrade_rows(backend, now) -> list[int]:
    """Rows stored verbatim, as azamrecon did before secrets were kept out of storage."""
    ids = []
    with transaction(backend.engine) as session:
        for n, body in enumerate(
            [
                callback(password=CURRENT, transid="OLD1"),
                callback(password="", transid="OLD2"),
                b"password=" + CURRENT.encode(),
            ]
        ):
            fields = extract_fields(body)
            ids.append(
                append_event(
                    session,
                    event_row(
                        source="callback", body=body, received_at=now + timedelta(seconds=n), auth="n/a", fields=fields
                    ),
                )
            )
    return ids


def assert_append_only(backend, event_id: int) -> None:
    for statement in (
        f"UPDATE payment_events SET body = body WHERE id = {event_id}",
        f"UPDATE payment_events SET msisdn = 'x' WHERE id = {event_id}",
        f"DELETE FROM payment_events WHERE id = {event_id}",
    ):
        with pytest.raises(StoreError, match="append-only"):
            with transaction(backend.engine) as session:
                session.execute(text(statement))

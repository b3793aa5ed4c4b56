"""Secrets and personal data at rest (issue 17, docs/privacy.md): the pure rules (markers, hashes, the key
file, the authenticator during a password rotation), and migration 0004 on a database that has data.

Storage without secrets is tests/test_privacy_storage.py; retention and a donor's data,
tests/test_privacy_retention.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat

import pytest
from sqlalchemy import text

from pipeline.auth import Authenticator
from pipeline.config import load_config
from pipeline.db import transaction
from pipeline.errors import ConfigError, StoreError
from pipeline.events import decode_json, extract_fields
from pipeline.logs import SizeRotation, open_log_file, secrets_of
from pipeline.privacy import BodyRedactor, load_key, retained_msisdn, secret_marker, which_secret
from tests.conftest import fixture_bytes
from tests.privacy_helpers import (
    CURRENT,
    HASHED,
    PREVIOUS,
    WRONG,
    assert_append_only,
    callback,
    key_of,
    pre_upgrade_rows,
)
from tests.servers import add_donation

# --- pure rules ---------------------------------------------------------------------------------


def test_the_marker_is_keyed_and_tells_which_password_was_sent():
    key, other = key_of(1), key_of(2)
    marker = secret_marker(key, CURRENT)
    assert re.fullmatch(r"redacted:hmac-sha256:[0-9a-f]{32}", marker)
    assert marker != secret_marker(other, CURRENT)  # not a plain hash: without the key it proves nothing
    assert hashlib.sha256(CURRENT.encode()).hexdigest()[:32] not in marker
    candidates = (("webhook.password", CURRENT), ("webhook.previous_password", PREVIOUS))
    assert which_secret(key, marker, candidates) == "webhook.password"
    assert which_secret(key, secret_marker(key, PREVIOUS), candidates) == "webhook.previous_password"
    assert which_secret(key, secret_marker(key, WRONG), candidates) is None
    assert which_secret(other, marker, candidates) is None


def test_a_stored_body_loses_its_secrets_and_keeps_everything_else_as_written():
    key = key_of()
    raw = (
        b'{"password": "%s", "signature": "c2lnbmVk", "amount": 25000.000000000001, "transactionstatus": "success",'
        b' "utilityref": "RHCI-DN-7-x", "msisdn": "0758285812", "nested": {"api_key": 12345, "token": "", "list": [{"secret": "s-1"}]},'
        b' "name": "Ama\\u00efa \\ud800"}' % CURRENT.encode()
    )
    decoded = decode_json(raw)
    stored = BodyRedactor(key).stored_body(raw, decoded)
    assert stored is not None and CURRENT.encode() not in stored and b"s-1" not in stored and b"12345" not in stored
    data = json.loads(stored)
    assert data["password"] == secret_marker(key, CURRENT)
    assert data["signature"] == "c2lnbmVk"  # no secret: it proves the body, it cannot forge one
    assert data["nested"]["token"] == ""  # an empty value hides nothing
    assert b'"amount":25000.000000000001' in stored  # the number as written, not 25000.0
    before, after = extract_fields(raw, decoded), extract_fields(stored)
    assert (before.amount, before.amount_error, before.msisdn, before.utilityref) == (
        after.amount,
        after.amount_error,
        after.msisdn,
        after.utilityref,
    )
    assert before.amount is None and before.amount_error  # three decimals: unusable either way
    # idempotent, and nothing to do for a body without a secret
    assert BodyRedactor(key).stored_body(stored, decode_json(stored)) is None
    plain = fixture_bytes("callback_guide_example.json")  # "password": ""
    assert BodyRedactor(key).stored_body(plain, decode_json(plain)) is None


def test_a_body_that_is_no_json_object_loses_the_configured_passwords_as_written():
    redactor = BodyRedactor(key_of(), [CURRENT, PREVIOUS, "abc"])
    stored = redactor.stored_body(b'password=%s&x={"password": "%s"' % (CURRENT.encode(), PREVIOUS.encode()), None)
    assert CURRENT.encode() not in stored and PREVIOUS.encode() not in stored
    assert secret_marker(key_of(), CURRENT).encode() in stored
    assert redactor.stored_body(b"abc nothing configured here", None) is None  # too short to be replaced as text


def test_equal_numbers_hash_equal_with_their_last_three_digits():
    key = key_of()
    hashed = retained_msisdn(key, "255758285812")
    assert HASHED.fullmatch(hashed) and hashed.endswith(":812")
    assert hashed == retained_msisdn(key, "255758285812") != retained_msisdn(key, "255758285813")
    assert hashed != retained_msisdn(key_of(2), "255758285812")


def test_the_key_file_is_created_0600_once_and_refused_when_garbled(tmp_path):
    path = tmp_path / "k" / "azamrecon.key"
    with pytest.raises(ConfigError, match="privacy.key_file"):
        load_key(path)  # its directory does not exist
    path.parent.mkdir()
    with pytest.raises(ConfigError, match="does not exist"):
        load_key(path, create=False)
    first = load_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path).fingerprint == first.fingerprint
    assert first.fingerprint not in path.read_text() and path.read_text().strip() not in repr(first)
    path.write_text("not a key\n")
    with pytest.raises(ConfigError, match="does not hold a key"):
        load_key(path)


def test_previous_password_config_env_and_the_authenticator():
    config = load_config(
        None, environ={"AZAM_PAY_WEBHOOK_PASSWORD": CURRENT, "AZAM_PAY_WEBHOOK_PREVIOUS_PASSWORD": PREVIOUS}
    )
    assert config.webhook.passwords() == (("webhook.password", CURRENT), ("webhook.previous_password", PREVIOUS))
    assert set(secrets_of(config)) >= {CURRENT, PREVIOUS}
    with pytest.raises(ConfigError, match="previous_password"):
        load_config(None, environ={"AZAM_PAY_WEBHOOK_PREVIOUS_PASSWORD": PREVIOUS})
    fields = lambda password: extract_fields(callback(password=password))  # noqa: E731
    rotating = Authenticator(password=CURRENT, previous_password=PREVIOUS)
    assert [rotating.check(fields(p), b"") for p in (CURRENT, PREVIOUS, WRONG)] == ["verified", "verified", "failed"]
    assert Authenticator(password=CURRENT).check(fields(PREVIOUS), b"") == "failed"  # the window closed


def test_log_files_are_0640_and_start_anew_each_utc_day(tmp_path):
    old_umask = os.umask(0o022)
    try:
        path = tmp_path / "payments.log"
        os.close(open_log_file(str(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND))
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        path.chmod(0o644)  # left by an older version: narrowed when opened again
        os.close(open_log_file(str(path), os.O_WRONLY | os.O_APPEND))
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old_umask)
    day = 1_800_000_000 - 1_800_000_000 % 86400
    clock = [day + 3600.0]
    rotation = SizeRotation(10_000, clock=lambda: clock[0])
    with open(path, "a") as handle:
        handle.write("a line\n")
        handle.flush()
        os.utime(path, (day + 3600, day + 3600))
        assert rotation("next\n", handle) is False  # same UTC day
        clock[0] = day + 86400 + 5  # the first line of the next day
        assert rotation("next\n", handle) is True


# --- migration 0004 on a database that has data --------------------------------------------------


def _to_revision(engine, revision: str) -> None:
    from alembic import command

    from pipeline.schema import alembic_config

    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def test_migration_0004_keeps_credited_donations_and_widens_their_number(backend, now):
    from alembic.script import ScriptDirectory

    from pipeline.schema import alembic_config, current_revision, schema_differences, upgrade

    _to_revision(backend.engine, "0003")
    try:
        assert current_revision(backend.engine) == "0003"
        with transaction(backend.engine) as session:
            session.execute(
                text(
                    "INSERT INTO patients (id, name, funding_required, funding_received, status, created_at) "
                    "VALUES (1, 'Amina', 100000, 1000, 'FUNDING', :at)"
                ),
                {"at": now.replace(tzinfo=None)},
            )
        add_donation(backend.engine, "RHCI-DN-1-x", donation_id=1, msisdn="255758285812")
        with transaction(backend.engine) as session:
            session.execute(
                text(
                    "INSERT INTO funding_credits (donation_id, patient_id, amount, event_id, credited_at) VALUES (1, 1, 1000, 1, :at)"
                ),
                {"at": now.replace(tzinfo=None)},
            )
        with pytest.raises(StoreError, match="append-only"):  # 0003's trigger: no update at all
            pre_upgrade_rows(backend, now)
            with transaction(backend.engine) as session:
                session.execute(text("UPDATE payment_events SET msisdn = 'x'"))
    finally:
        upgrade(backend.engine)
    head = ScriptDirectory.from_config(alembic_config(backend.engine)).get_current_head()
    assert current_revision(backend.engine) == head >= "0004" and schema_differences(backend.engine) == []
    hashed = retained_msisdn(key_of(), "255758285812")
    with transaction(backend.engine) as session:
        session.execute(text("UPDATE donations SET msisdn = :m WHERE id = 1"), {"m": hashed})
    assert backend.scalar("SELECT msisdn FROM donations WHERE id = 1") == hashed
    assert backend.scalar("SELECT COUNT(*) FROM funding_credits") == 1
    assert backend.scalar("SELECT COUNT(*) FROM privacy_control WHERE id = 1 AND rewrite_allowed = 0") == 1
    if backend.name == "sqlite":
        assert backend.scalar("PRAGMA integrity_check") == "ok"
    assert_append_only(backend, backend.scalar("SELECT MIN(id) FROM payment_events"))


def test_during_a_rotation_both_passwords_are_always_compared_in_constant_time(monkeypatch):
    import hmac

    import pipeline.auth as auth_module

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(auth_module.hmac, "compare_digest", lambda a, b: calls.append(b) or real(a, b))
    rotating = Authenticator(password=CURRENT, previous_password=PREVIOUS)
    for candidate in (CURRENT, PREVIOUS, WRONG):
        rotating.check(extract_fields(callback(password=candidate)), b"")
    assert calls == [CURRENT.encode(), PREVIOUS.encode()] * 3  # the current match does not skip the second

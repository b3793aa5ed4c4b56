"""database.table_prefix: every table azamrecon creates, the Alembic version table included, carries the prefix;
`init` checks the prefixed names before creating anything and never touches another application's tables; the
receiver, the fold, the rebuild and the reports then read and write the prefixed tables. On a real SQLite file
and on real MariaDB."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from jobs.fold import run_fold
from jobs.rebuild import check, rebuild
from pipeline.config import Config
from pipeline.db import make_engine, transaction
from pipeline.errors import ConfigError, StoreError
from pipeline.schema import current_revision, foreign_tables, owned_tables, schema_differences, upgrade
from pipeline.table_names import VERSION_TABLE, owned_names, rewriter
from receiver.app import CALLBACK_PATH
from tests.builders import add_donation, callback_body
from tests.conftest import Backend, empty_database_url
from tests.fold_helpers import populate
from tests.receiving import JSON, receiver
from tests.servers import run_cli, write_config

PREFIX = "azamrecon_"
PORTAL = {"donor_donation", "auth_app_patientprofile"}
# someone else's tables of azamrecon's plain names, beside the portal's
FOREIGN = {"patients": "name VARCHAR(20)", "donations": "amount INTEGER", VERSION_TABLE: "version_num VARCHAR(32)"}


def _engine(url: str, prefix: str = ""):
    return make_engine(Config().database.model_copy(update={"url": url, "table_prefix": prefix}))


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def empty(request, tmp_path):
    """(url, an engine without a prefix, which sees every table by its real name)."""
    url = empty_database_url(request.param, tmp_path, "prefix")
    plain = _engine(url)
    yield url, plain
    plain.dispose()


def _tables(plain) -> set[str]:
    with plain.connect() as connection:
        return set(inspect(connection).get_table_names())


def _prefixed_tables() -> set[str]:
    return {PREFIX + name for name in owned_names()}


def _definitions(plain, tables) -> dict[str, str]:
    """Each table's definition as the database states it (SHOW CREATE TABLE; sqlite_master's sql)."""
    with plain.connect() as connection:
        if plain.dialect.name == "sqlite":
            rows = connection.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'table'")
            return {name: sql for name, sql in rows if name in tables}
        return {name: connection.exec_driver_sql(f"SHOW CREATE TABLE `{name}`").one()[1] for name in tables}


def _init(url, tmp_path, prefix=PREFIX):
    settings = {"database.url": url, "privacy.key_file": str(tmp_path / "k"), "logging.dir": str(tmp_path / "logs")}
    if prefix:
        settings["database.table_prefix"] = prefix
    return run_cli("init", config_path=write_config(tmp_path / "config.yaml", settings))


# --- the rewrite -----------------------------------------------------------------------------------


def test_the_rewrite_prefixes_whole_table_names_and_nothing_else():
    rewrite = rewriter(PREFIX)
    statement = (
        "SELECT donations.id, p.name FROM donations JOIN `patients` p ON p.id = donations.patient_id "
        'WHERE EXISTS (SELECT 1 FROM "funding_credits" WHERE donation_id = donations.id)'
    )
    assert rewrite(statement) == (
        "SELECT azamrecon_donations.id, p.name FROM azamrecon_donations JOIN `azamrecon_patients` p "
        'ON p.id = azamrecon_donations.patient_id WHERE EXISTS (SELECT 1 FROM "azamrecon_funding_credits" '
        "WHERE donation_id = azamrecon_donations.id)"
    )
    assert rewrite("UPDATE alembic_version SET version_num='0006'") == (
        "UPDATE azamrecon_alembic_version SET version_num='0006'"
    )
    # index, column and temporary names that contain a table's name, the portal's tables, prefixed names
    untouched = (
        "CREATE INDEX ix_donations_status ON t (status); SELECT donations_rewritten, events_rewritten FROM x; "
        "CREATE TEMPORARY TABLE staged_donations; SELECT id FROM donor_donation JOIN auth_app_patientprofile; "
        "SELECT 1 FROM azamrecon_payment_events; DROP TRIGGER payment_events_update_guard"
    )
    assert rewrite(untouched) == untouched
    assert rewrite(rewrite(statement)) == rewrite(statement)  # a statement from reflected names passes unchanged
    assert rewriter("")(statement) == statement  # no prefix: nothing is rewritten
    assert not PORTAL & owned_names() and VERSION_TABLE in owned_names()


def test_a_mysql_database_named_like_a_table_is_refused_with_a_prefix():
    """Its name appears in SHOW and DESCRIBE statements, which the rewrite would change."""
    with pytest.raises(ConfigError, match="named 'donations'"):
        _engine("mysql+pymysql://root@127.0.0.1:3306/donations", PREFIX)
    _engine("mysql+pymysql://root@127.0.0.1:3306/donations").dispose()  # without a prefix it is only a name


# --- init --------------------------------------------------------------------------------------------


def test_init_creates_exactly_the_prefixed_tables_and_a_second_init_changes_nothing(empty, tmp_path):
    url, plain = empty
    done = _init(url, tmp_path)
    assert done.returncode == 0, done.stderr
    prefixed = _engine(url, PREFIX)
    assert _tables(plain) == _prefixed_tables() == owned_tables(prefixed)
    head = current_revision(prefixed)
    assert head is not None and current_revision(plain) is None  # the version table is the prefixed one
    assert foreign_tables(prefixed) == []
    again = _init(url, tmp_path)
    assert again.returncode == 0 and f"already at revision {head}" in again.stdout, again.stderr
    assert _tables(plain) == _prefixed_tables()
    with plain.connect() as connection:  # index names are the plain ones, on the prefixed table
        indexes = {index["name"] for index in inspect(connection).get_indexes(PREFIX + "donations")}
    assert "ix_donations_status" in indexes
    prefixed.dispose()


def test_beside_the_portal_and_foreign_tables_of_the_plain_names_init_creates_only_prefixed_tables(empty, tmp_path):
    """Without the prefix this database is refused: its `patients`, `donations` and `alembic_version` are
    someone else's. With it, they are not in the way, and they come out of `init` exactly as they went in."""
    url, plain = empty
    with plain.begin() as connection:
        for name in PORTAL:
            connection.execute(text(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, note VARCHAR(20))"))
        for name, column in FOREIGN.items():
            connection.execute(text(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, {column})"))
        connection.execute(text(f"INSERT INTO {VERSION_TABLE} (id, version_num) VALUES (1, 'theirs')"))
        connection.execute(text("INSERT INTO patients (id, name) VALUES (1, 'not ours')"))
    theirs = PORTAL | set(FOREIGN)
    before = _definitions(plain, theirs)
    refused = _init(url, tmp_path, prefix="")
    assert refused.returncode == 2 and "patients" in refused.stderr, refused.stderr
    done = _init(url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert _tables(plain) == theirs | _prefixed_tables()
    assert _definitions(plain, theirs) == before
    with plain.connect() as connection:
        assert connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar() == "theirs"
        assert connection.execute(text("SELECT name FROM patients")).scalar() == "not ours"
        assert connection.execute(text(f"SELECT COUNT(*) FROM {PREFIX}patients")).scalar() == 0


def test_a_prefixed_table_that_is_not_ours_is_refused_and_nothing_is_created(empty, tmp_path):
    url, plain = empty
    with plain.begin() as connection:
        connection.execute(text(f"CREATE TABLE {PREFIX}patients (id INTEGER PRIMARY KEY)"))
    done = _init(url, tmp_path)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert len(done.stderr.splitlines()) == 1 and f"{PREFIX}patients" in line and "nothing was created" in line
    assert _tables(plain) == {f"{PREFIX}patients"}


def test_another_prefix_in_the_same_database_is_refused_before_anything_is_created(empty, tmp_path):
    """A plain azamrecon schema holds the triggers (and, on SQLite, the indexes; on MariaDB, the foreign keys)
    that a prefixed one would name the same: refused in one line, not stopped half-way."""
    url, plain = empty
    upgrade(plain)
    before = _tables(plain)
    done = _init(url, tmp_path)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "trigger payment_events_no_delete" in done.stderr
    assert "nothing was created" in done.stderr and _tables(plain) == before


# --- the schema --------------------------------------------------------------------------------------


def _shape(plain, prefix: str) -> dict:
    """Every owned table's columns, indexes, keys and triggers, with the prefix taken out of every name."""

    def plain_name(name):
        return name.removeprefix(prefix) if name else name

    shape = {}
    with plain.connect() as connection:
        inspector = inspect(connection)
        for name in sorted(owned_names()):
            table = prefix + name
            shape[name] = (
                [
                    (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                    for c in inspector.get_columns(table)
                ],
                sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table)),
                sorted(
                    (fk["name"], tuple(fk["constrained_columns"]), plain_name(fk["referred_table"]))
                    for fk in inspector.get_foreign_keys(table)
                ),
                sorted(inspector.get_pk_constraint(table)["constrained_columns"]),
            )
        if plain.dialect.name == "sqlite":
            rows = connection.exec_driver_sql("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger'")
        else:
            rows = connection.exec_driver_sql(
                "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_STATEMENT FROM information_schema.TRIGGERS "
                "WHERE TRIGGER_SCHEMA = DATABASE()"
            )
        shape["triggers"] = sorted((name, plain_name(table), body.replace(prefix, "")) for name, table, body in rows)
    return shape


def test_the_prefixed_schema_is_the_plain_one_renamed(empty, tmp_path):
    """schema_differences compares the models with a plain schema (test_schema.py); a prefixed schema is
    the same statements with the tables renamed, triggers included."""
    url, plain = empty
    other = empty_database_url(plain.dialect.name, tmp_path, "prefix_plain")
    reference = _engine(other)
    upgrade(reference)
    prefixed = _engine(url, PREFIX)
    upgrade(prefixed)
    shape = _shape(plain, PREFIX)
    assert shape == _shape(reference, "")
    assert any(table == "payment_events" for _name, table, _body in shape["triggers"])
    with pytest.raises(ValueError, match="without a table prefix"):
        schema_differences(prefixed)
    reference.dispose()
    prefixed.dispose()


# --- a round trip ------------------------------------------------------------------------------------


def test_receiver_fold_rebuild_and_checks_use_the_prefixed_tables(empty, tmp_path, now):
    url, plain = empty
    assert _init(url, tmp_path).returncode == 0
    engine = _engine(url, PREFIX)
    backend = Backend(plain.dialect.name, url, engine, tmp_path, overrides={"database.table_prefix": PREFIX})
    config = backend.config()
    ids = populate(backend, now)  # patients, donations and events through the store
    donation, reference = add_donation(engine, now, patient_id=ids["amina"], amount="3000")
    with receiver(backend) as client:  # a callback through the receiver, known: 200
        answer = client.post(
            CALLBACK_PATH, content=callback_body(reference, amount="3000", transaction_id="tx-r"), headers=JSON
        )
    assert answer.status_code == 200, answer.text
    folded = run_fold(engine, config, now, announce=False)
    assert folded.events == 13 and folded.transitions > 0
    assert check(engine, config).differences == []
    rebuild(engine, config, now)
    assert check(engine, config).differences == []
    settings_file = tmp_path / "config.yaml"  # _init wrote it with the prefix
    rebuilt = run_cli("rebuild", "--check", config_path=settings_file)
    assert rebuilt.returncode == 0 and "0 difference(s)" in rebuilt.stdout, rebuilt.stdout + rebuilt.stderr
    reported = run_cli("report", "--check", config_path=settings_file)  # populate's REVIEW donation, read back
    assert reported.returncode == 1 and "1 donation(s) in REVIEW" in reported.stdout, reported.stdout
    assert run_cli("fold", config_path=settings_file).returncode == 0  # a recorded run, in job_runs
    with plain.connect() as connection:  # the data is in the prefixed tables, and there are no others
        count = connection.execute(text(f"SELECT COUNT(*) FROM {PREFIX}payment_events")).scalar()
        status = connection.execute(text(f"SELECT status FROM {PREFIX}donations WHERE id = {donation}")).scalar()
        credited = connection.execute(text(f"SELECT COUNT(*) FROM {PREFIX}funding_credits")).scalar()
        runs = connection.execute(text(f"SELECT COUNT(*) FROM {PREFIX}job_runs")).scalar()
    assert (count, status) == (13, "COMPLETED") and credited > 0 and runs > 0
    assert _tables(plain) == _prefixed_tables()
    # the append-only trigger guards the prefixed log, whichever way the statement names it
    for bind, table in ((engine, "payment_events"), (plain, f"{PREFIX}payment_events")):
        with pytest.raises(StoreError, match="append-only"):
            with transaction(bind) as session:
                session.execute(text(f"UPDATE {table} SET status = 'FAILED'"))
    engine.dispose()

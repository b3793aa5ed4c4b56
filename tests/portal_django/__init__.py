"""A test-only Django project holding the donation portal's two tables, created as the portal creates them.

Two apps, labelled as the portal's tables are named: `auth_app` (PatientProfile, auth_app_patientprofile) and
`donor` (Donation, donor_donation). Their fields are copied from the portal (jenadiusnicholaus/rhci-portal-backend,
patient/models.py and donor/models.py). Settings are made at runtime, once per process, by `setup(databases)`;
tests reach them through the `portal_db` fixture (tests/portal_fixtures.py), not directly.

Regenerate the migrations after a model change (then `ruff format` and `ruff check --fix` them, as checked in):

    rm tests/portal_django/*/migrations/0*.py
    .venv/bin/python -c "from tests.portal_django import makemigrations; makemigrations()"
"""

from __future__ import annotations

APPS = ["tests.portal_django.auth_app", "tests.portal_django.donor"]


def setup(databases: dict) -> None:
    """Configure Django with these DATABASES (aliases -> settings dicts) and the two apps, then django.setup().
    Once per process: a second call with the same aliases is a no-op, with other aliases an error."""
    import django
    from django.conf import settings

    if settings.configured:
        if set(settings.DATABASES) != set(databases):
            raise RuntimeError(f"Django already configured with databases {sorted(settings.DATABASES)}")
        return
    settings.configure(
        INSTALLED_APPS=APPS,
        DATABASES=databases,
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        SECRET_KEY="tests-only-portal",
    )
    django.setup()
    _load_mysql_backend_on_pymysql()


def _load_mysql_backend_on_pymysql() -> None:
    """Django's MySQL backend on PyMySQL, as the portal's settings/__init__.py sets it up (install_as_MySQLdb),
    but without leaving PyMySQL posing as MySQLdb for the rest of the test session: SQLAlchemy's mysql+mysqldb
    driver would find it (tests/test_cli_errors.py expects that driver to be missing)."""
    import sys

    import pymysql

    def shims() -> dict:
        return {name: module for name, module in sys.modules.items() if name.split(".")[0] == "MySQLdb"}

    saved = shims()
    pymysql.install_as_MySQLdb()
    try:
        import django.db.backends.mysql.base  # noqa: F401  (binds PyMySQL as its Database module)
    finally:
        for name in shims():
            del sys.modules[name]
        sys.modules.update(saved)


def makemigrations() -> None:
    """Write the apps' migrations (tests/portal_django/<app>/migrations) from the models."""
    from django.core.management import call_command

    setup({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}})
    call_command("makemigrations", "auth_app", "donor")

"""The config's sections: what can be set, its defaults and its checks (pipeline/config.py loads them)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

HOSTS = {
    "sandbox": ("https://authenticator-sandbox.azampay.co.tz", "https://sandbox.azampay.co.tz"),
    "production": ("https://authenticator.azampay.co.tz", "https://checkout.azampay.co.tz"),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# SQLAlchemy backend names pipeline.db.make_engine knows how to configure (MariaDB goes through "mysql").
SUPPORTED_BACKENDS = {"sqlite": "SQLite (sqlite:///path)", "mysql": "MySQL/MariaDB (mysql+pymysql://user:pass@host/db)"}


class DatabaseConfig(_Section):
    url: str = "sqlite:///azamrecon.db"
    sqlite_synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    busy_timeout_ms: int = Field(10_000, ge=0)
    pool_size: int = Field(5, ge=1)
    # put before every table azamrecon creates, the Alembic version table included: "azamrecon_" beside a
    # portal's own tables (docs/portal.md); "" keeps a standalone database's names
    table_prefix: str = Field("", pattern=r"^([a-z][a-z0-9_]{0,23})?$")

    @field_validator("url")
    @classmethod
    def _supported_url(cls, value: str) -> str:
        # Messages never repeat the URL: it may hold the database password.
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        supported = " and ".join(SUPPORTED_BACKENDS.values())
        try:
            backend = make_url(value).get_backend_name()
        except (ArgumentError, ValueError):  # ValueError: a bad port, whose message quotes part of the URL
            raise ValueError(f"not a database URL; supported: {supported}") from None
        if backend not in SUPPORTED_BACKENDS:
            raise ValueError(f"unsupported database backend {backend!r}; supported: {supported}")
        return value


class StatusApiConfig(_Section):
    """The transaction-status call. Path, parameter names and text patterns are uncertain (docs/architecture.md, "Departures")."""

    path: str = "/azampay/gettransactionstatus"
    reference_param: str = "pgReferenceId"
    provider_param: str = "bankName"
    # Case-insensitive regular expressions matched against the free-text `data` field, tried in the order
    # failed, pending, success. Success moves money, so its defaults match only whole known sentences.
    success_patterns: list[str] = [
        r"^\s*(the )?(transaction|payment)( was| is| has been)? (successful|completed|completed successfully|succeeded)\.?\s*$",
        r"^\s*success(ful)?\.?\s*$",
    ]
    failed_patterns: list[str] = [
        r"\bfail(s|ed|ure)?\b",
        r"\bcancel+ed\b",
        r"\brejected\b",
        r"\bexpired\b",
        r"\bdeclined\b",
        r"\bnot successful\b",
        r"\bunsuccessful\b",
    ]
    pending_patterns: list[str] = [r"\bpending\b", r"\bprocessing\b", r"\bin progress\b"]


class AzamPayConfig(_Section):
    environment: Literal["sandbox", "production"] = "sandbox"
    auth_url: str | None = None
    checkout_url: str | None = None
    app_name: str = "azamrecon"
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    api_key: SecretStr = SecretStr("")  # the guide's TOKEN, sent as X-API-KEY
    timeout_connect: float = Field(10.0, gt=0)
    timeout_read: float = Field(30.0, gt=0)
    token_margin_seconds: int = Field(60, ge=0)
    get_retries: int = Field(3, ge=0)
    status: StatusApiConfig = StatusApiConfig()

    @model_validator(mode="before")
    @classmethod
    def _drop_vendor_id(cls, data: Any) -> Any:
        # none of AzamPay's calls we make takes a vendor id (docs/deploy.md); files written for older
        # versions still carry the key, so it is dropped rather than refused
        if isinstance(data, dict):
            data = {key: value for key, value in data.items() if key != "vendor_id"}
        return data

    @model_validator(mode="after")
    def _hosts_from_environment(self) -> AzamPayConfig:
        auth, checkout = HOSTS[self.environment]
        if not self.auth_url:
            object.__setattr__(self, "auth_url", auth)
        if not self.checkout_url:
            object.__setattr__(self, "checkout_url", checkout)
        object.__setattr__(self, "auth_url", self.auth_url.rstrip("/"))
        object.__setattr__(self, "checkout_url", self.checkout_url.rstrip("/"))
        return self


class WebhookConfig(_Section):
    """How callbacks are authenticated and which ones the fold trusts (docs/architecture.md, "Where each rule lives").

    mode `auto`: trust every callback when no credential is configured (the old view's behaviour,
    warned about at startup); otherwise trust only verified ones.  mode `verify`: trust no callback,
    only poll answers move money.
    """

    mode: Literal["auto", "verify"] = "auto"
    password: SecretStr = SecretStr("")
    # the password being replaced, accepted too during a rotation window (docs/deploy.md, "Rotate the
    # webhook password"); empty once AzamPay sends the new one
    previous_password: SecretStr = SecretStr("")
    signature_public_key_pem: str = ""  # PEM text, or a path to a PEM file
    allowed_ips: list[str] = []  # empty: any client; otherwise IPs or CIDR networks
    trusted_proxies: list[str] = []  # X-Forwarded-For is honoured only from these
    max_body_bytes: int = Field(64 * 1024, ge=1024)

    @field_validator("previous_password")
    @classmethod
    def _previous_needs_current(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        current = info.data.get("password")
        if value.get_secret_value() and not (current and current.get_secret_value()):
            raise ValueError("set without webhook.password: a rotation needs the new password too")
        return value

    @property
    def credential_configured(self) -> bool:
        return bool(self.password.get_secret_value() or self.signature_public_key_pem)

    def passwords(self) -> tuple[tuple[str, str], ...]:
        """(config key, password) of every password a callback may carry, current first."""
        named = (("webhook.password", self.password), ("webhook.previous_password", self.previous_password))
        return tuple((name, secret.get_secret_value()) for name, secret in named if secret.get_secret_value())

    def public_key_pem(self) -> bytes | None:
        text = self.signature_public_key_pem.strip()
        if not text:
            return None
        if text.startswith("-----BEGIN"):
            return text.encode()
        return Path(text).read_bytes()


class ReceiverConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    spool_dir: str = "spool"
    group_commit_max_batch: int = Field(256, ge=1)
    checkout_api_key: SecretStr = SecretStr("")  # the portal's key for checkout and status; empty: both disabled
    checkout_rate_limit_per_minute: int = Field(3, ge=1)  # per msisdn
    status_check_min_interval_seconds: float = Field(30.0, ge=0)  # per donation
    status_wait_seconds: float = Field(3.0, ge=0)  # read-your-writes wait for the fold
    # AzamPay calls of the portal endpoints run on pools of their own, never on the threads that serve
    # /healthz and callbacks; a full pool is answered at once (docs/deploy.md, "Timeouts")
    status_workers: int = Field(4, ge=1)
    status_check_timeout_seconds: float = Field(5.0, gt=0)  # then answered with "checking": true
    checkout_workers: int = Field(4, ge=1)
    # slow or idle clients (per connection) and the database wait; all below nginx's proxy_read_timeout
    header_timeout_seconds: float = Field(10.0, gt=0)
    body_timeout_seconds: float = Field(10.0, gt=0)
    keep_alive_timeout_seconds: float = Field(5.0, gt=0)
    max_connections: int = Field(500, ge=2)  # per worker process; past it requests get 503 unread
    database_timeout_seconds: float = Field(4.0, gt=0)  # MySQL connect, read and write
    # prometheus_client's multiprocess files: every worker's counters, summed on each scrape
    metrics_dir: str = "metrics"


class DonationsConfig(_Section):
    reference_prefix: str = "RHCI-DN"
    currency: str = "TZS"
    charge_currency: str = "TZS"
    # funding currency -> TZS; a donation's charge_amount is amount * rate, rounded to whole shillings
    exchange_rates: dict[str, Decimal] = {"TZS": Decimal("1")}

    @field_validator("reference_prefix")
    @classmethod
    def _ascii_prefix(cls, value: str) -> str:
        if not value or not value.isascii() or len(value) > 64:
            raise ValueError("must be 1-64 ASCII characters")
        return value


class FoldConfig(_Section):
    batch_size: int = Field(5_000, ge=1)
    gap_timeout_seconds: float = Field(300.0, ge=0)  # how long a missing event id is waited for
    max_gaps: int = Field(10_000, ge=1)  # missing ids awaited at once; past it the oldest are given up
    waiting_days: float = Field(7.0, gt=0)  # how long an unmatched event is offered new donations


class PollConfig(_Section):
    threshold_minutes: float = Field(10.0, ge=0)
    backoff_base_minutes: float = Field(10.0, gt=0)
    backoff_cap_minutes: float = Field(240.0, gt=0)
    concurrency: int = Field(8, ge=1)
    max_age_hours: float = Field(24.0, gt=0)


class SchedulerConfig(_Section):
    fold_interval_seconds: float = Field(0.5, gt=0)
    poll_interval_seconds: float = Field(60.0, gt=0)
    spool_interval_seconds: float = Field(30.0, gt=0)
    report_cron: str = "5 0 * * *"  # minute hour day month day_of_week, UTC
    reports_dir: str = "reports"  # where the daily report's JSON files go
    misfire_grace_seconds: int = Field(30, ge=1)

    @field_validator("report_cron")
    @classmethod
    def _crontab(cls, value: str) -> str:
        # The scheduler's own parser, so that every command (not only `scheduler`) rejects what it would.
        from apscheduler.triggers.cron import CronTrigger

        CronTrigger.from_crontab(value, timezone="UTC")
        return value


class LoggingConfig(_Section):
    dir: str = "logs"
    level: str = "INFO"
    rotation: str = "10 MB"
    retention: str = "30 days"
    # the zone log lines are stamped in, so the webhook guide's `date`-based greps count the portal team's
    # local day; stored times stay UTC
    timezone: str = "Africa/Dar_es_Salaam"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Africa/Dar_es_Salaam or UTC)") from exc
        return value

    # loguru parses these only when pipeline.logs adds its file sinks; its own parsers run here instead so
    # that every command rejects a bad value at load time (through pipeline.loguru_adapter).
    @field_validator("level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        from loguru import logger

        logger.level(value)
        return value

    @field_validator("rotation")
    @classmethod
    def _loguru_rotation(cls, value: str) -> str:
        from pipeline import loguru_adapter

        loguru_adapter.check_rotation(value)
        return value

    @field_validator("retention")
    @classmethod
    def _loguru_retention(cls, value: str) -> str:
        from pipeline import loguru_adapter

        loguru_adapter.check_retention(value)
        return value


class AlertsConfig(_Section):
    """Thresholds for `report --check` and the shipped Prometheus rules (docs/monitoring.md)."""

    fold_stale_seconds: float = Field(300.0, gt=0)  # no successful fold for this long
    max_lag_seconds: float = Field(60.0, gt=0)  # the oldest unfolded event is older than this
    max_review: int = Field(0, ge=0)  # donations in REVIEW beyond this many
    max_stuck_pending: int = Field(0, ge=0)  # PENDING past poll.max_age_hours beyond this many


class PrivacyConfig(_Section):
    """Secrets and personal data at rest (docs/privacy.md)."""

    # the installation's HMAC key (32 random bytes, hex); created 0600 by `azamrecon init`; never in the
    # database. Relative paths are from the config file's directory, like every path here (load_config).
    key_file: str = "azamrecon.key"
    # phone numbers unused this long are replaced by a keyed hash and their last 3 digits, in the log,
    # the donations and the log files: beyond AzamPay's dispute window, and a year of donor questions
    msisdn_retention_days: int = Field(400, ge=1)
    retain_cron: str = "20 0 * * *"  # when the scheduler runs `privacy retain`: crontab, UTC

    @field_validator("retain_cron")
    @classmethod
    def _crontab(cls, value: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        CronTrigger.from_crontab(value, timezone="UTC")
        return value


# a portal table or column name is put into SQL as an identifier, so only plain names are accepted
_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


def _identifier(default: str):
    return Field(default, pattern=_IDENTIFIER)


class PortalDonationColumns(_Section):
    """The portal's donation columns azamrecon reads or writes (docs/portal.md, "The portal's tables")."""

    id: str = _identifier("id")
    patient_id: str = _identifier("patient_id")
    amount: str = _identifier("amount")
    patient_amount: str = _identifier("patient_amount")
    currency: str = _identifier("currency")
    status: str = _identifier("status")
    payment_method: str = _identifier("payment_method")
    transaction_id: str = _identifier("transaction_id")
    payment_gateway: str = _identifier("payment_gateway")
    gateway_reference: str = _identifier("gateway_reference")
    failure_reason: str = _identifier("failure_reason")
    completed_at: str = _identifier("completed_at")
    created_at: str = _identifier("created_at")
    updated_at: str = _identifier("updated_at")


class PortalPatientColumns(_Section):
    id: str = _identifier("id")
    full_name: str = _identifier("full_name")
    funding_required: str = _identifier("funding_required")
    funding_received: str = _identifier("funding_received")
    funding_currency: str = _identifier("funding_currency")
    status: str = _identifier("status")
    updated_at: str = _identifier("updated_at")


class PortalConfig(_Section):
    """Portal mode (docs/portal.md): the Django portal's donations and patients are the rows azamrecon
    reconciles. Off by default: the embedded default and `make demo` keep azamrecon's own tables."""

    enabled: bool = False
    write: bool = True  # false: shadow mode, the portal is read and never written (`azamrecon portal diff`)
    donation_table: str = _identifier("donor_donation")
    patient_table: str = _identifier("auth_app_patientprofile")
    donation_columns: PortalDonationColumns = PortalDonationColumns()
    patient_columns: PortalPatientColumns = PortalPatientColumns()
    # a donation is azamrecon's when its payment_gateway is one of these when first seen, or an AzamPay
    # callback or checkout names it; every other donation's status is the portal's, read and never written
    owned_gateways: list[str] = ["Azam Pay", "AzamPay"]
    # payment_method values starting with this were charged the exact amount; every other one (mobile
    # money, or not yet known) was charged the amount truncated to whole units, as the portal sends it
    bank_method_prefix: str = "Bank Transfer"
    # a full comparison of every portal row (the only way to see queryset.update(), which leaves
    # updated_at alone); rows above the highest id seen are read before every fold
    scan_interval_seconds: float = Field(30.0, gt=0)

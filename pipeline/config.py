"""One validated config object, read from config.yaml and overridden by the webhook guide's environment names.

The guide's names are flat (AZAM_PAY_AUTH, TOKEN, ...) while the config is nested, so overrides are
applied through the explicit table ENV_OVERRIDES rather than pydantic-settings' prefix convention.
What each section holds, with its defaults and checks, is in pipeline/sections.py; this module loads them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
    model_validator,
)

from pipeline.errors import ConfigError
from pipeline.sections import (
    AlertsConfig,
    AzamPayConfig,
    DatabaseConfig,
    DonationsConfig,
    FoldConfig,
    LoggingConfig,
    PollConfig,
    PortalConfig,
    PrivacyConfig,
    ReceiverConfig,
    SchedulerConfig,
    WebhookConfig,
    _Section,
)

# environment name -> dotted config key
ENV_OVERRIDES = {
    "DATABASE_URL": "database.url",
    "AZAM_PAY_AUTH": "azampay.auth_url",
    "AZAM_PAY_CHECKOUT_URL": "azampay.checkout_url",
    "AZAM_PAY_CLIENT_ID": "azampay.client_id",
    "AZAM_PAY_CLIENT_SECRET": "azampay.client_secret",
    "TOKEN": "azampay.api_key",
    "AZAM_PAY_ENVIRONMENT": "azampay.environment",
    "AZAM_PAY_TIMEOUT_CONNECT": "azampay.timeout_connect",
    "AZAM_PAY_TIMEOUT_READ": "azampay.timeout_read",
    "AZAM_PAY_WEBHOOK_PASSWORD": "webhook.password",
    "AZAM_PAY_WEBHOOK_PREVIOUS_PASSWORD": "webhook.previous_password",
}

DEFAULT_CONFIG_PATH = Path("config.yaml")


class Config(_Section):
    database: DatabaseConfig = DatabaseConfig()
    azampay: AzamPayConfig = AzamPayConfig()
    webhook: WebhookConfig = WebhookConfig()
    receiver: ReceiverConfig = ReceiverConfig()
    donations: DonationsConfig = DonationsConfig()
    fold: FoldConfig = FoldConfig()
    poll: PollConfig = PollConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    logging: LoggingConfig = LoggingConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    alerts: AlertsConfig = AlertsConfig()
    portal: PortalConfig = PortalConfig()

    @model_validator(mode="after")
    def _portal_tables_are_not_ours(self) -> Config:
        # every statement naming one of azamrecon's tables gets the table prefix: a portal table or column of
        # such a name would be read and written as azamrecon's own
        from pipeline.table_names import owned_names

        if self.portal.enabled:
            names = {f"portal.{key}": getattr(self.portal, key) for key in ("donation_table", "patient_table")}
            for section in ("donation_columns", "patient_columns"):
                values = getattr(self.portal, section).model_dump()
                names.update((f"portal.{section}.{key}", value) for key, value in values.items())
            for key, name in names.items():
                if name in owned_names():
                    raise ValueError(f"{key} {name!r} is the name of a table of azamrecon's")
        return self

    @property
    def callbacks_trusted_without_credential(self) -> bool:
        return self.webhook.mode == "auto" and not self.webhook.credential_configured


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[leaf] = value


def write_config_file(path: str | Path, settings: Mapping[str, Any]) -> Path:
    """Write a config.yaml from dotted keys, e.g. {"database.url": ..., "webhook.password": "pw"}."""
    data: dict[str, Any] = {}
    for dotted, value in settings.items():
        _set_dotted(data, dotted, value)
    path = Path(path)
    path.write_text(yaml.safe_dump(data, sort_keys=True), encoding="utf-8")
    return path


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    if not first["loc"]:  # a rule across keys (Config's own validators): its message names the keys
        return f"invalid config: {first['msg'].removeprefix('Value error, ')}"
    key = ".".join(str(part) for part in first["loc"])
    env = next((name for name, dotted in ENV_OVERRIDES.items() if dotted == key), None)
    where = f"{key} (env {env})" if env else key
    return f"invalid config value for {where}: {first['msg']}"


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    env_file: str | Path | None = None,
) -> Config:
    """Read config.yaml (if present), apply environment overrides, then `overrides` (dotted keys), validate.

    A missing default config.yaml means defaults; a missing explicitly named file is an error.
    `env_file` (default $AZAMRECON_ENV_FILE): a systemd EnvironmentFile whose values override `environ`.
    Relative paths (a SQLite file, directories, the key file, a PEM file) are made absolute from the config
    file's directory, or from the working directory when there is no config file: RELATIVE_PATHS.
    """
    environ = os.environ if environ is None else environ
    env_file = env_file or environ.get("AZAMRECON_ENV_FILE")
    if env_file:
        from pipeline.envfile import read_env_file

        environ = {**environ, **read_env_file(env_file)}
    data: dict[str, Any] = {}
    if path is None:
        candidate = Path(environ.get("AZAMRECON_CONFIG", DEFAULT_CONFIG_PATH))
        explicit = "AZAMRECON_CONFIG" in environ
    else:
        candidate, explicit = Path(path), True
    base = Path.cwd()
    if candidate.exists():
        base = candidate.absolute().parent
        try:
            loaded = yaml.safe_load(candidate.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot parse config file {candidate}: {str(exc).splitlines()[0]}") from None
        except OSError as exc:  # a directory, unreadable, ...
            raise ConfigError(f"cannot read config file {candidate}: {exc.strerror or exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {candidate} must hold a mapping at top level")
        data = loaded or {}
    elif explicit:
        raise ConfigError(f"config file not found: {candidate}")
    for name, dotted in ENV_OVERRIDES.items():
        if environ.get(name) not in (None, ""):
            _set_dotted(data, dotted, environ[name])
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    from pipeline.config_paths import anchor_paths

    return anchor_paths(config, base)

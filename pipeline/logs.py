"""Logging. Library code only emits through loguru; sinks are configured here, and only entry points call it.

logs/payments.log  payment lines (the webhook guide's greps run against this file)
logs/errors.log    every ERROR and above
logs/app.log       everything
Every record's message passes through pipeline.redact before any sink sees it.
"""
from __future__ import annotations

import sys
from pathlib import Path

from loguru import logger

from pipeline.config import Config, LoggingConfig
from pipeline.redact import REDACTED, redact_text

# Library code logs payment lines through this; the sink filter routes them to payments.log.
payments = logger.bind(channel="payments")
# The same channel for text already redacted by pipeline.redact (the patcher then only scrubs literal secrets).
payments_redacted = payments.bind(redacted=True)

_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS!UTC} | {level:<8} | {extra[component]} | {message}"


def secrets_of(config: Config) -> tuple[str, ...]:
    """Literal secret values to scrub from any log text, whatever key they hide behind."""
    values = (
        config.webhook.password.get_secret_value(),
        config.azampay.client_secret.get_secret_value(),
        config.azampay.api_key.get_secret_value(),
        config.receiver.checkout_api_key.get_secret_value(),
    )
    return tuple(v for v in values if v)


def configure_logging(
    config: LoggingConfig,
    component: str = "app",
    secrets: tuple[str, ...] = (),
    stderr_level: str | None = "WARNING",
) -> None:
    directory = Path(config.dir)
    directory.mkdir(parents=True, exist_ok=True)

    def scrub(record) -> None:
        if record["extra"].get("redacted"):
            # the caller already passed its text through pipeline.redact (e.g. redact_body on the hot
            # callback path); only the literal secrets are scrubbed again, which is cheap
            message = record["message"]
            for secret in secrets:
                if secret and len(secret) >= 4:
                    message = message.replace(secret, REDACTED)
            record["message"] = message
        else:
            record["message"] = redact_text(record["message"], secrets)
        record["extra"].setdefault("component", component)

    logger.remove()
    logger.configure(patcher=scrub, extra={"component": component})
    common = {"format": _FORMAT, "rotation": config.rotation, "retention": config.retention, "encoding": "utf-8", "enqueue": False}
    logger.add(directory / "payments.log", level="INFO", filter=lambda r: r["extra"].get("channel") == "payments", **common)
    logger.add(directory / "errors.log", level="ERROR", **common)
    logger.add(directory / "app.log", level=config.level, **common)
    if stderr_level:
        logger.add(sys.stderr, level=stderr_level, format="{level}: {message}")


def warn_if_open(config: Config) -> None:
    """DESIGN §4: with no credential configured every callback is trusted, as the old view did. Say so at startup."""
    if config.callbacks_trusted_without_credential:
        logger.warning(
            "No webhook password or signature key configured: every callback is trusted "
            "(set AZAM_PAY_WEBHOOK_PASSWORD or webhook.signature_public_key_pem)"
        )

"""azamrecon events list|show|ingest|ingest-spool."""

from __future__ import annotations

import click

from jobs.commands.common import (
    Context,
    emit_object,
    emit_result,
    emit_rows,
    format_option,
    pass_context,
    result_format_option,
)
from pipeline.db import transaction
from pipeline.errors import NotFound
from pipeline.fold import Source
from pipeline.redact import SECRET_MARKER, redact_body


@click.group()
def events() -> None:
    """Read and feed the append-only payment event log."""


def _summary(event) -> dict:
    return {
        "id": event.id,
        "received_at": event.received_at,
        "source": event.source,
        "auth": event.auth,
        "status": event.status,
        "amount": event.amount,
        "utilityref": event.utilityref,
        "transaction_ref": event.transaction_ref,
        "donation_id": event.donation_id,
        "parse_error": event.parse_error,
    }


@events.command("list")
@click.option(
    "--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, help="How many events, newest first."
)
@click.option(
    "--before", "before_id", type=click.IntRange(min=1), default=None, help="Only events with an id below this."
)
@click.option(
    "--source",
    type=click.Choice([source.value for source in Source]),
    default=None,
    help="Only this source.",
)
@click.option(
    "--donation",
    "donation_id",
    type=click.IntRange(min=1),
    default=None,
    help="Only events appended for this donation id.",
)
@format_option
@pass_context
def list_events(ctx: Context, limit, before_id, source, donation_id, output_format) -> None:
    """List events, newest first."""
    from pipeline.store.events import list_events as query

    with transaction(ctx.engine) as session:
        rows = [
            _summary(e)
            for e in query(session, limit=limit, before_id=before_id, source=source, donation_id=donation_id)
        ]
    emit_rows(rows, output_format, title="payment_events")


@events.command("show")
@click.argument("event_id", type=click.IntRange(min=1))
@format_option
@pass_context
def show_event(ctx: Context, event_id: int, output_format) -> None:
    """Show one event with its body (secrets redacted). A stored body keeps a
    keyed hash of its password; password_used names the configured password
    it matches (webhook.password, webhook.previous_password) or says none."""
    from pipeline.store.events import get_event

    with transaction(ctx.engine) as session:
        event = get_event(session, event_id)
        if event is None:
            raise NotFound(f"event {event_id} not found")
        data = _summary(event) | {
            "content_type": event.content_type,
            "remote_addr": event.remote_addr,
            "headers": event.headers,
            "status_raw": event.status_raw,
            "operator": event.operator,
            "msisdn": event.msisdn,
            "externalreference": event.externalreference,
            "donation_hint": event.donation_hint,
            "body_sha256": event.body_sha256,
            "password_used": _password_used(ctx, event.body),
            "body": redact_body(event.body),
        }
    emit_object(data, output_format, title=f"event {event_id}")


def _password_used(ctx: Context, body: bytes) -> str | None:
    """Which configured password a stored body's marker proves was sent; None when the body has no marker
    (or no key file exists to tell)."""
    from pipeline.errors import ConfigError
    from pipeline.events import decode_json
    from pipeline.privacy import load_key, which_secret

    decoded = decode_json(body)
    marker = decoded.data.get("password") if decoded.error is None and isinstance(decoded.data, dict) else None
    if not isinstance(marker, str) or not marker.startswith(SECRET_MARKER):
        return None
    try:
        key = load_key(ctx.config.privacy.key_file, create=False)
    except ConfigError:
        return "unknown (no key file)"
    return which_secret(key, marker, ctx.config.webhook.passwords()) or "none configured now"


@events.command("ingest-spool")
@click.option(
    "--spool-dir", type=click.Path(file_okay=False), default=None, help="Spool directory (default: receiver.spool_dir)."
)
@result_format_option
@pass_context
def ingest_spool_command(ctx: Context, spool_dir: str | None, output_format: str) -> None:
    """Replay callbacks spooled during a database outage into the log (idempotent)."""
    from jobs.runs import recorded_run, utcnow
    from jobs.spool import ingest_spool
    from pipeline.privacy import redactor_for

    ctx.setup_logging("spool")
    now = utcnow()
    with recorded_run(ctx.engine, "spool", now) as run:
        counts = run.counts = ingest_spool(
            ctx.engine, spool_dir or ctx.config.receiver.spool_dir, now, redactor_for(ctx.config)
        )
    emit_result(
        counts, output_format, [" ".join(f"{key}={value}" for key, value in counts.items())], title="ingest-spool"
    )

"""azamrecon donations show|resolve|list (create arrives with checkout initiation)."""
from __future__ import annotations

import click
from sqlalchemy import select

from jobs.commands.common import Context, emit_object, emit_rows, format_option, pass_context
from jobs.runs import utcnow
from pipeline.db import transaction


@click.group()
def donations() -> None:
    """Donations: their status, credits, anomalies and operator decisions."""


def donation_dict(session, donation) -> dict:
    from pipeline.models import Anomaly, FundingCredit

    credit = session.scalar(select(FundingCredit).where(FundingCredit.donation_id == donation.id))
    anomalies = session.scalars(select(Anomaly).where(Anomaly.donation_id == donation.id).order_by(Anomaly.event_id)).all()
    return {
        "id": donation.id,
        "patient_id": donation.patient_id,
        "status": donation.status,
        "amount": donation.amount,
        "currency": donation.currency,
        "patient_amount": donation.patient_amount,
        "support_amount": donation.support_amount,
        "charge_amount": donation.charge_amount,
        "charge_currency": donation.charge_currency,
        "msisdn": donation.msisdn,
        "provider": donation.provider,
        "external_reference": donation.external_reference,
        "transaction_id": donation.transaction_id,
        "created_at": donation.created_at,
        "completed_at": donation.completed_at,
        "review_reason": donation.review_reason,
        "needs_check": bool(donation.needs_check),
        "last_event_id": donation.last_event_id,
        "events": donation.event_ids or "",
        "credit": None if credit is None else {"amount": credit.amount, "patient_id": credit.patient_id, "event_id": credit.event_id, "credited_at": credit.credited_at},
        "anomalies": [{"event_id": a.event_id, "kind": a.kind, "detail": a.detail} for a in anomalies],
    }


@donations.command("show")
@click.argument("donation_id", type=click.IntRange(min=1))
@format_option
@pass_context
def show(ctx: Context, donation_id: int, output_format) -> None:
    """Show a donation's current (folded) state, its credit and anomalies."""
    from pipeline.store.donations import get_donation

    with transaction(ctx.engine) as session:
        data = donation_dict(session, get_donation(session, donation_id))
    emit_object(data, output_format, title=f"donation {donation_id}")


@donations.command("resolve")
@click.argument("donation_id", type=click.IntRange(min=1))
@click.option("--status", required=True, type=click.Choice(["COMPLETED", "FAILED", "CANCELLED"], case_sensitive=False), help="The operator's decision.")
@click.option("--note", required=True, help="Why; kept in the log with the decision.")
@click.option("--actor", default=None, help="Who decides (default: the login name).")
@click.option("--fold/--no-fold", "fold_now", default=True, show_default=True, help="Fold right away so the decision shows.")
@pass_context
def resolve(ctx: Context, donation_id: int, status: str, note: str, actor, fold_now: bool) -> None:
    """Append an operator decision for a donation (the only way out of REVIEW, and the only override)."""
    from jobs.fold import run_fold
    from jobs.operator import resolve_donation
    from pipeline.store.donations import get_donation

    ctx.setup_logging("operator")
    now = utcnow()
    event_id = resolve_donation(ctx.engine, donation_id, status, note, now, actor=actor)
    click.echo(f"operator event {event_id} appended: donation {donation_id} -> {status.upper()}")
    if fold_now:
        run_fold(ctx.engine, ctx.config, now)
        with transaction(ctx.engine) as session:
            click.echo(f"donation {donation_id} is now {get_donation(session, donation_id).status}")


@donations.command("list")
@click.option("--status", type=click.Choice(["PENDING", "COMPLETED", "FAILED", "CANCELLED", "EXPIRED", "REVIEW"], case_sensitive=False), default=None, help="Only this status.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True, help="How many, newest first.")
@format_option
@pass_context
def list_donations(ctx: Context, status, limit: int, output_format) -> None:
    """List donations, newest first."""
    from pipeline.models import Donation

    columns = ["id", "patient_id", "status", "amount", "charge_amount", "external_reference", "created_at", "completed_at"]
    query = select(Donation).order_by(Donation.id.desc()).limit(limit)
    if status:
        query = query.where(Donation.status == status.upper())
    with transaction(ctx.engine) as session:
        rows = [{c: getattr(d, c) for c in columns} for d in session.scalars(query)]
    emit_rows(rows, output_format, title="donations", columns=columns)


COMMANDS = [donations]

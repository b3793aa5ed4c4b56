"""azamrecon donations create|show|resolve|list."""

from __future__ import annotations

import sys

import click
from sqlalchemy import select

from jobs.commands.common import (
    Context,
    emit_object,
    emit_result,
    emit_rows,
    format_option,
    pass_context,
    result_format_option,
)
from jobs.runs import utcnow
from pipeline.db import transaction
from pipeline.fold import DONATION_STATUSES, OPERATOR_STATUSES


@click.group()
def donations() -> None:
    """Donations: their status, credits, anomalies and operator decisions."""


def donation_dict(session, donation) -> dict:
    from jobs.operator import decisions
    from pipeline.models import Anomaly, DonationEvent, FundingCredit

    credit = session.scalar(select(FundingCredit).where(FundingCredit.donation_id == donation.id))
    anomalies = session.scalars(
        select(Anomaly).where(Anomaly.donation_id == donation.id).order_by(Anomaly.event_id)
    ).all()
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
        "events": ",".join(
            str(event_id)
            for event_id in session.scalars(
                select(DonationEvent.event_id)
                .where(DonationEvent.donation_id == donation.id)
                .order_by(DonationEvent.event_id)
            )
        ),
        "credit": None
        if credit is None
        else {
            "amount": credit.amount,
            "patient_id": credit.patient_id,
            "event_id": credit.event_id,
            "credited_at": credit.credited_at,
        },
        "anomalies": [{"event_id": a.event_id, "kind": a.kind, "detail": a.detail} for a in anomalies],
        "decisions": decisions(session, donation.id),
    }


@donations.command("show")
@click.argument("donation_id", type=click.IntRange(min=1))
@format_option
@pass_context
def show(ctx: Context, donation_id: int, output_format) -> None:
    """Show a donation's current (folded) state, its credit, anomalies and operator decisions (who decided, and for whom)."""
    from pipeline.store.donations import get_donation

    with transaction(ctx.engine) as session:
        data = donation_dict(session, get_donation(session, donation_id))
    emit_object(data, output_format, title=f"donation {donation_id}")


@donations.command("resolve")
@click.argument("donation_id", type=click.IntRange(min=1))
@click.option(
    "--status",
    required=True,
    type=click.Choice([str(status) for status in OPERATOR_STATUSES], case_sensitive=False),
    help="The operator's decision.",
)
@click.option("--note", required=True, help="Why; kept in the log with the decision.")
@click.option(
    "--actor",
    default=None,
    help="The person you decide for, recorded beside (never instead of) your OS user and SUDO_USER.",
)
@click.option(
    "--yes",
    "yes",
    is_flag=True,
    help="Confirm a decision that reverses a credit or replaces a final status (needed when stdin is no terminal).",
)
@click.option(
    "--fold/--no-fold", "fold_now", default=True, show_default=True, help="Fold right away so the decision shows."
)
@result_format_option
@pass_context
def resolve(
    ctx: Context, donation_id: int, status: str, note: str, actor, yes: bool, fold_now: bool, output_format: str
) -> None:
    """Append an operator decision for a donation (the only way out of REVIEW, and the only override).

    A decision that reverses a credit (the donation is COMPLETED) or replaces
    another final status (FAILED, CANCELLED, EXPIRED) asks for confirmation on
    a terminal and needs --yes otherwise. A decision on PENDING or REVIEW does not.
    """
    from jobs.fold import run_fold
    from jobs.operator import check_decision, current_status, needs_confirmation, resolve_donation
    from pipeline.store.donations import get_donation

    status, note, actor = check_decision(status, note, actor)
    ctx.setup_logging("operator")
    if fold_now:  # judge the status with every event received so far, not the status last folded
        run_fold(ctx.engine, ctx.config, utcnow())
    seen = current_status(ctx.engine, donation_id)
    reason = needs_confirmation(seen, status)
    if reason and not yes:
        _confirm(f"donation {donation_id}: {reason}")
    now = utcnow()
    event_id = resolve_donation(ctx.engine, donation_id, status, note, now, actor=actor, expected_status=seen)
    data = {"donation_id": donation_id, "event_id": event_id, "decision": status, "status": None}
    lines = [f"operator event {event_id} appended: donation {donation_id} -> {status}"]
    if fold_now:
        run_fold(ctx.engine, ctx.config, now)
        with transaction(ctx.engine) as session:
            data["status"] = get_donation(session, donation_id).status
        lines.append(f"donation {donation_id} is now {data['status']}")
    emit_result(data, output_format, lines, title=f"donation {donation_id}")


def stdin_is_terminal() -> bool:
    """Whether someone can answer a prompt; tests replace it to play a terminal."""
    return sys.stdin.isatty()


def _confirm(what: str) -> None:
    """Ask on a terminal (default No); elsewhere a script must say --yes. Either refusal appends nothing."""
    from pipeline.errors import AzamreconError, InputError

    if not stdin_is_terminal():
        raise InputError(f"{what}; nothing appended: pass --yes to confirm")
    # err=True: the question goes to stderr, so stdout keeps only the result (--format json)
    if not click.confirm(f"{what}. Append this decision?", default=False, err=True):
        raise AzamreconError(f"{what}; not confirmed, nothing appended")


@donations.command("create")
@click.option(
    "--patient", "patient_id", type=click.IntRange(min=1), default=None, help="The patient the donation funds."
)
@click.option("--general", is_flag=True, help="A general-fund donation (no patient).")
@click.option("--amount", required=True, help="Total amount in the funding currency, e.g. 25000.")
@click.option(
    "--patient-amount", default=None, help="The patient's share (default: the amount minus --support-amount)."
)
@click.option(
    "--support-amount",
    default=None,
    help="The organisation's share (default: 0, or the amount minus --patient-amount).",
)
@click.option("--msisdn", required=True, help="The donor's mobile number: 0XXXXXXXXX, 255XXXXXXXXX or +255XXXXXXXXX.")
@click.option("--provider", required=True, help="Airtel, Tigo, Halopesa, Azampesa or Mpesa.")
@click.option(
    "--currency",
    default=None,
    help="Currency of --amount (default: donations.currency, the only one a patient donation may use; a --general donation may use any in donations.exchange_rates); charged in TZS.",
)
@click.option(
    "--fold/--no-fold", "fold_now", default=True, show_default=True, help="Fold right away so the state shows."
)
@result_format_option
@pass_context
def create(
    ctx: Context,
    patient_id,
    general: bool,
    amount: str,
    patient_amount,
    support_amount,
    msisdn: str,
    provider: str,
    currency,
    fold_now: bool,
    output_format: str,
) -> None:
    """Create a donation and initiate the AzamPay mobile-money checkout (the donor confirms on the phone)."""
    from jobs.commands.common import parse_amount_option
    from jobs.fold import run_fold
    from pipeline.azampay import AzamPayClient
    from pipeline.checkout import initiate_checkout
    from pipeline.errors import InputError
    from pipeline.store.donations import get_donation, normalise_provider

    ctx.refuse_in_portal_mode("donations")
    if general and patient_id is not None:
        raise InputError("--patient and --general exclude each other")
    if not general and patient_id is None:
        raise InputError("--patient is required (or --general for the general fund)")
    total = parse_amount_option(amount, "--amount")
    patient_share = parse_amount_option(patient_amount, "--patient-amount", positive=False)
    support_share = parse_amount_option(support_amount, "--support-amount", positive=False)
    provider = normalise_provider(provider)
    ctx.setup_logging("checkout")
    now = utcnow()
    with AzamPayClient(ctx.config.azampay) as client:
        result = initiate_checkout(
            ctx.engine,
            ctx.config,
            client,
            patient_id=patient_id,
            amount=total,
            msisdn=msisdn,
            provider=provider,
            now=now,
            patient_amount=patient_share,
            support_amount=support_share,
            currency=currency,
        )
    status = result.event_status
    if fold_now:
        run_fold(ctx.engine, ctx.config, utcnow())
        with transaction(ctx.engine) as session:
            status = get_donation(session, result.donation_id).status
    data = {
        "donation_id": result.donation_id,
        "reference": result.reference,
        "charge_amount": result.charge_amount,
        "charge_currency": result.charge_currency,
        "transaction_id": result.transaction_id,
        "checkout_event_id": result.event_id,
        "checkout_event_status": result.event_status,
        "status": status if fold_now else None,
    }
    lines = [
        f"donation {result.donation_id}",
        f"reference {result.reference}",
        f"charge {result.charge_amount} {result.charge_currency}",
        f"transactionId {result.transaction_id or '-'}",
        f"status {status}" + ("" if fold_now else f" (checkout event {result.event_status}; not folded)"),
    ]
    emit_result(data, output_format, lines, title=f"donation {result.donation_id}")
    result.raise_for_error()  # one line on stderr, non-zero exit (AzamreconGroup)


@donations.command("list")
@click.option(
    "--status",
    type=click.Choice([str(status) for status in DONATION_STATUSES], case_sensitive=False),
    default=None,
    help="Only this status.",
)
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True, help="How many, newest first.")
@format_option
@pass_context
def list_donations(ctx: Context, status, limit: int, output_format) -> None:
    """List donations, newest first."""
    from pipeline.models import Donation

    columns = [
        "id",
        "patient_id",
        "status",
        "amount",
        "charge_amount",
        "external_reference",
        "created_at",
        "completed_at",
    ]
    query = select(Donation).order_by(Donation.id.desc()).limit(limit)
    if status:
        query = query.where(Donation.status == status.upper())
    with transaction(ctx.engine) as session:
        rows = [{c: getattr(d, c) for c in columns} for d in session.scalars(query)]
    emit_rows(rows, output_format, title="donations", columns=columns)

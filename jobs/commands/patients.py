"""azamrecon patients add|show|list."""

from __future__ import annotations

import click
from sqlalchemy import func, select

from jobs.commands.common import Context, emit_object, emit_rows, format_option, parse_amount_option, pass_context
from jobs.runs import utcnow
from pipeline.db import transaction


@click.group()
def patients() -> None:
    """Patients whose treatment donations fund."""


def patient_dict(session, patient) -> dict:
    from pipeline.models import Donation, FundingCredit

    credits = session.scalar(
        select(func.count()).select_from(FundingCredit).where(FundingCredit.patient_id == patient.id)
    )
    donations = session.scalar(select(func.count()).select_from(Donation).where(Donation.patient_id == patient.id))
    from pipeline.report_sections import percent_funded

    percent = percent_funded(patient.funding_received, patient.funding_required)
    return {
        "id": patient.id,
        "name": patient.name,
        "funding_required": patient.funding_required,
        "funding_received": patient.funding_received,
        "percent_funded": percent,
        "status": patient.status,
        "fully_funded_at": patient.fully_funded_at,
        "donations": donations,
        "credits": credits,
        "created_at": patient.created_at,
    }


@patients.command("add")
@click.option("--name", required=True, help="Patient name.")
@click.option("--funding-required", required=True, help="Treatment cost in the funding currency, e.g. 1000.00.")
@format_option
@pass_context
def add(ctx: Context, name: str, funding_required: str, output_format) -> None:
    """Add a patient."""
    from pipeline.store.donations import create_patient

    ctx.refuse_in_portal_mode("patients")
    amount = parse_amount_option(funding_required, "--funding-required")
    with transaction(ctx.engine) as session:
        patient = create_patient(session, name=name, funding_required=amount, now=utcnow())
        data = patient_dict(session, patient)
    emit_object(data, output_format, title=f"patient {data['id']}")


@patients.command("show")
@click.argument("patient_id", type=click.IntRange(min=1))
@format_option
@pass_context
def show(ctx: Context, patient_id: int, output_format) -> None:
    """Show a patient's funding: received / required, status."""
    from pipeline.store.donations import get_patient

    with transaction(ctx.engine) as session:
        data = patient_dict(session, get_patient(session, patient_id))
    emit_object(data, output_format, title=f"patient {patient_id}")


@patients.command("list")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True, help="How many patients.")
@format_option
@pass_context
def list_patients(ctx: Context, limit: int, output_format) -> None:
    """List patients with their funding."""
    from pipeline.models import Patient

    with transaction(ctx.engine) as session:
        rows = [
            {
                "id": p.id,
                "name": p.name,
                "funding_received": p.funding_received,
                "funding_required": p.funding_required,
                "status": p.status,
            }
            for p in session.scalars(select(Patient).order_by(Patient.id).limit(limit))
        ]
    emit_rows(
        rows, output_format, title="patients", columns=["id", "name", "funding_received", "funding_required", "status"]
    )

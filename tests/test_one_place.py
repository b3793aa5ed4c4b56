"""Names and wordings written once and read elsewhere keep their stored values."""

from __future__ import annotations

from pipeline.errors import InvariantViolation
from pipeline.fold import COMPLETED, TERMINAL_STATUSES, UNPAID_ENDINGS, PatientStatus
from pipeline.invariants import ERROR_PREFIX, is_violation_error, violation_error
from pipeline.models import RunOutcome


def test_the_fold_invariant_error_is_the_one_metrics_recognises():
    error = violation_error([f"patient {n}: ..." for n in range(7)])
    assert isinstance(error, InvariantViolation)
    assert str(error).startswith("fold invariant violated: patient 0") and str(error).count("patient") == 5
    assert is_violation_error(str(error)) and ERROR_PREFIX == "fold invariant violated"
    assert not is_violation_error("disk full") and not is_violation_error(None)


def test_stored_values_are_unchanged():
    assert [s.value for s in PatientStatus] == ["FUNDING", "FULLY_FUNDED"]
    assert [o.value for o in RunOutcome] == ["running", "ok", "skipped", "error"]
    assert TERMINAL_STATUSES == (COMPLETED, *UNPAID_ENDINGS) and set(UNPAID_ENDINGS) == {
        "FAILED",
        "CANCELLED",
        "EXPIRED",
    }


def test_percent_funded_is_one_rule_for_the_report_and_patients_show():
    """Rounded down to the cent: a patient 4 shillings short of 100,000 reads 99.99, never 100.0."""
    import inspect
    from decimal import Decimal

    from jobs.commands import patients
    from pipeline.report_sections import percent_funded

    assert percent_funded(Decimal("99996"), Decimal("100000")) == Decimal("99.99")
    assert percent_funded(Decimal("5"), Decimal("0")) is None
    assert "percent_funded(" in inspect.getsource(patients.patient_dict)

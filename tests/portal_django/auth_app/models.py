"""The portal's PatientProfile (patient/models.py, db_table auth_app_patientprofile), field for field, less the
relations to models not reproduced here: `user` (OneToOne to the user model) and `country_fk` (CountryLookup)."""

import random
import string
from datetime import datetime

from django.db import models

from tests.portal_django.constants import CURRENCY_CHOICES


class PatientProfile(models.Model):
    STATUS_CHOICES = [
        ("SUBMITTED", "Submitted"),
        ("SCHEDULED", "Scheduled"),
        ("PUBLISHED", "Published"),
        ("AWAITING_FUNDING", "Awaiting Funding"),
        ("FULLY_FUNDED", "Fully Funded"),
        ("TREATMENT_COMPLETE", "Treatment Complete"),
    ]
    GENDER_CHOICES = [("M", "Male"), ("F", "Female"), ("O", "Other")]

    bill_identifier = models.CharField(
        max_length=50,
        unique=True,
        blank=True,
        null=True,
        db_index=True,
        help_text="Unique code for Bill Pay/USSD donations (e.g., JIMMY-2024-001)",
    )
    photo = models.ImageField(upload_to="patient_photos/", null=True, blank=True, help_text="Patient profile photo")
    full_name = models.CharField(max_length=200)
    gender = models.CharField(max_length=1, choices=GENDER_CHOICES)
    short_description = models.CharField(max_length=255, help_text="Brief summary for card display")
    long_story = models.TextField(help_text="Detailed patient story")
    medical_partner = models.CharField(max_length=200, blank=True, help_text="Hospital/Care center name")
    diagnosis = models.TextField(blank=True)
    treatment_needed = models.TextField(blank=True, help_text="e.g., Removal of Tumor")
    treatment_date = models.DateField(null=True, blank=True)
    funding_required = models.DecimalField(
        max_digits=10, decimal_places=2, default=0.00, help_text="Amount RHCI raises for patient"
    )
    # A stored column that no portal code path updates: the portal computes `funding_received_actual` from
    # COMPLETED donations, but its completion code compares this stale column (see tests/portal_django/portal.py).
    funding_received = models.DecimalField(max_digits=10, decimal_places=2, default=0.00)
    funding_currency = models.CharField(
        max_length=3, choices=CURRENCY_CHOICES, default="USD", help_text="Currency for patient funding"
    )
    total_treatment_cost = models.DecimalField(
        max_digits=10, decimal_places=2, default=0.00, help_text="Total average cost including other contributions"
    )
    cost_breakdown_notes = models.TextField(blank=True, help_text="Additional notes about cost breakdown")
    status = models.CharField(max_length=20, choices=STATUS_CHOICES, default="SUBMITTED")
    is_featured = models.BooleanField(default=False, help_text="Feature this patient on homepage")
    rejection_reason = models.TextField(blank=True, help_text="Reason for rejection (if applicable)")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "auth_app_patientprofile"

    def __str__(self):
        return f"{self.full_name} - {self.status}"

    def save(self, *args, **kwargs):
        """As the portal: a bill_identifier like JIMMY-2026-042 on first save (checked on the saving database)."""
        if not self.bill_identifier:
            self.bill_identifier = self._generate_bill_identifier(kwargs.get("using") or self._state.db)
        super().save(*args, **kwargs)

    def _generate_bill_identifier(self, using):
        first_name = self.full_name.split()[0].upper()[:10]
        while True:
            code = f"{first_name}-{datetime.now().year}-{''.join(random.choices(string.digits, k=3))}"
            if not PatientProfile.objects.using(using).filter(bill_identifier=code).exists():
                return code

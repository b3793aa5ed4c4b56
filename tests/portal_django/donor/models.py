"""The portal's Donation (donor/models.py, db_table donor_donation), field for field and index for index, less
the `donor` foreign key to the user model (and the two indexes that include it)."""

from decimal import Decimal

from django.db import models

from tests.portal_django.constants import CURRENCY_CHOICES


class Donation(models.Model):
    DONATION_TYPE_CHOICES = [("ONE_TIME", "One-time Donation"), ("MONTHLY", "Monthly Recurring")]
    # The portal's choices: PROCESSING is not one of them (its views never store it either).
    STATUS_CHOICES = [
        ("PENDING", "Pending"),
        ("COMPLETED", "Completed"),
        ("FAILED", "Failed"),
        ("CANCELLED", "Cancelled"),
        ("REFUNDED", "Refunded"),
    ]

    is_anonymous = models.BooleanField(
        default=False, help_text="Whether this donation is anonymous (hide donor identity)"
    )
    anonymous_name = models.CharField(max_length=200, blank=True, help_text="Name for anonymous donations")
    anonymous_email = models.EmailField(blank=True, help_text="Email for receipt/updates (anonymous donations)")
    patient = models.ForeignKey(
        "auth_app.PatientProfile",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="donations",
        help_text="Specific patient to donate to (null for general donation)",
    )
    amount = models.DecimalField(
        max_digits=10, decimal_places=2, help_text="Total donation amount (patient_amount + rhci_support_amount)"
    )
    patient_amount = models.DecimalField(
        max_digits=10, decimal_places=2, default=Decimal("0.00"), help_text="Amount allocated to patient funding"
    )
    rhci_support_amount = models.DecimalField(
        max_digits=10,
        decimal_places=2,
        default=Decimal("0.00"),
        null=True,
        blank=True,
        help_text="Optional amount to support RHCI operations",
    )
    currency = models.CharField(
        max_length=3, choices=CURRENCY_CHOICES, default="USD", help_text="Currency of the donation"
    )
    donation_type = models.CharField(max_length=20, choices=DONATION_TYPE_CHOICES, default="ONE_TIME")
    status = models.CharField(max_length=20, choices=STATUS_CHOICES, default="PENDING")
    payment_method = models.CharField(
        max_length=255, blank=True, help_text="Payment method used (e.g., card, mobile money)"
    )
    transaction_id = models.CharField(
        max_length=200, blank=True, unique=True, null=True, help_text="External payment gateway transaction ID"
    )
    payment_gateway = models.CharField(
        max_length=50,
        blank=True,
        help_text="Payment gateway used (e.g., Stripe, PayPal, M-Pesa, AZAMPAY, YELLOWCARD)",
    )
    gateway_reference = models.CharField(
        max_length=200,
        blank=True,
        null=True,
        help_text="Payment gateway's reference ID (e.g., Yellow Card collection_id)",
    )
    amount_usd = models.DecimalField(
        max_digits=10, decimal_places=2, null=True, blank=True, help_text="USD equivalent value for RHCI reporting"
    )
    exchange_rate = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True, help_text="Exchange rate used (local currency to USD)"
    )
    rate_locked_at = models.DateTimeField(null=True, blank=True, help_text="When exchange rate was locked")
    failure_reason = models.TextField(blank=True, help_text="Reason for payment failure (if any)")
    message = models.TextField(blank=True, help_text="Optional message from donor to patient")
    dedication = models.CharField(max_length=200, blank=True, help_text="Optional dedication (e.g., 'In memory of...')")
    recurring_frequency = models.IntegerField(default=1, help_text="Frequency in months (1=monthly, 3=quarterly, etc.)")
    next_charge_date = models.DateField(
        null=True, blank=True, help_text="Next scheduled charge date for recurring donations"
    )
    is_recurring_active = models.BooleanField(default=False, help_text="Whether recurring donation is active")
    parent_donation = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="recurring_payments",
        help_text="Parent donation for recurring payment children",
    )
    ip_address = models.GenericIPAddressField(null=True, blank=True, help_text="IP address of donor")
    user_agent = models.TextField(blank=True, help_text="Browser user agent")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True, help_text="When donation was successfully completed")

    class Meta:
        db_table = "donor_donation"
        ordering = ["-created_at"]
        verbose_name = "Donation"
        verbose_name_plural = "Donations"
        indexes = [
            models.Index(fields=["-created_at"]),
            models.Index(fields=["status"]),
            models.Index(fields=["patient", "-created_at"]),
            models.Index(fields=["transaction_id"]),
            models.Index(fields=["rhci_support_amount", "status"]),
        ]

    def __str__(self):
        return f"{self.amount} {self.currency} ({self.status})"

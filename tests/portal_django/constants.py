"""The portal's utils/constants.py CURRENCY_CHOICES, copied (choices are Python-side only: no schema effect)."""

CURRENCY_CHOICES = [
    ("USD", "US Dollar ($)"),
    ("EUR", "Euro (€)"),
    ("GBP", "British Pound (£)"),
    ("TZS", "Tanzanian Shilling (TSh)"),
    ("KES", "Kenyan Shilling (KSh)"),
    ("UGX", "Ugandan Shilling (USh)"),
    ("ZAR", "South African Rand (R)"),
    ("NGN", "Nigerian Naira (₦)"),
    ("GHS", "Ghanaian Cedi (GH₵)"),
    ("CAD", "Canadian Dollar (C$)"),
    ("AUD", "Australian Dollar (A$)"),
]

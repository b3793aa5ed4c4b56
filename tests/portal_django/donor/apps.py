from django.apps import AppConfig


class DonorConfig(AppConfig):
    name = "tests.portal_django.donor"
    label = "donor"
    default_auto_field = "django.db.models.BigAutoField"  # as the portal's apps.py

from django.apps import AppConfig


class AuthAppConfig(AppConfig):
    name = "tests.portal_django.auth_app"
    label = "auth_app"
    default_auto_field = "django.db.models.BigAutoField"  # as the portal's apps.py

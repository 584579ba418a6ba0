from django.apps import AppConfig


class BackofficeConfig(AppConfig):
    """Staff-facing surfaces above the domain apps: Django admin and the admin API."""

    name = "backoffice"

from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"

    def ready(self) -> None:
        from . import sign_in_audit

        sign_in_audit.connect()

from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    name = "realtime"

    def ready(self):
        from .daphne_hooks import patch_daphne

        patch_daphne()

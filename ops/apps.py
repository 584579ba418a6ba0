from django.apps import AppConfig


class OpsConfig(AppConfig):
    """What an operator reads: health, Prometheus metrics and the per-call log line."""

    name = "ops"

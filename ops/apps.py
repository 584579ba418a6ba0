import logging

from django.apps import AppConfig
from django.conf import settings


class OpsConfig(AppConfig):
    """What an operator reads: health, Prometheus metrics and the per-call log line."""

    name = "ops"

    def ready(self) -> None:
        if settings.GATEWAY_LOG_FORMAT == "json":
            logging.captureWarnings(True)  # Python's warnings as JSON log records too, not stderr text

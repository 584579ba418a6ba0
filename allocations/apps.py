from django.apps import AppConfig
from django.utils.translation import gettext_lazy


class AllocationsConfig(AppConfig):
    name = "allocations"
    verbose_name = gettext_lazy("Allocations")

from django.apps import AppConfig
from django.utils.translation import gettext_lazy


class QuotaConfig(AppConfig):
    name = "quota"
    verbose_name = gettext_lazy("Quota")

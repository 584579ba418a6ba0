from django.urls import path

from . import install

urlpatterns = [
    path("codex.sh", install.codex_install, name="install-codex"),
    path("codex-restore.sh", install.codex_restore, name="install-codex-restore"),
]

"""The one-line install scripts (`curl -fsSL <gateway>/install/codex.sh | sh`): POSIX sh and
curl, filled in with the base URL this gateway is reached at."""

import re

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.template.loader import render_to_string
from django.views.decorators.http import require_GET

# What may be pasted between single quotes in a shell script and in TOML: a scheme, a host
# (already checked against ALLOWED_HOSTS) and a port, nothing that could quote or expand.
SAFE_BASE_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+")


def _script(request: HttpRequest, template: str) -> HttpResponse:
    base_url = request.build_absolute_uri("/").rstrip("/")
    if not SAFE_BASE_URL.fullmatch(base_url):
        return HttpResponseBadRequest("this host name cannot be written into a script\n", content_type="text/plain")
    body = render_to_string(template, {"base_url": base_url})
    response = HttpResponse(body, content_type="text/x-shellscript; charset=utf-8")
    response["Content-Disposition"] = f'inline; filename="{template.rsplit("/", 1)[-1]}"'
    return response


@require_GET
def codex_install(request: HttpRequest) -> HttpResponse:
    return _script(request, "install/codex.sh")


@require_GET
def codex_restore(request: HttpRequest) -> HttpResponse:
    return _script(request, "install/codex-restore.sh")

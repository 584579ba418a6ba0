"""Test connection: does a provider answer the gateway's key? A models list (free), or, when the
admin acknowledges it is billable, a one-token chat call. The outcome is a value, never an error:
`{ok, status, latency_ms, error}` (the error redacted: no key, no base URL). Audited."""

import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from http.client import HTTPMessage
from typing import IO
from urllib.parse import quote, urlsplit

from .audit import Actor, audit_record
from .crypto import provider_api_key
from .models import Deployment, Provider, ProviderKind

TIMEOUT_S = 10.0


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    status: int | None
    latency_ms: int | None
    error: str


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the key to wherever the upstream points: refused, as on /v1."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def _request(provider: Provider, *, billable: bool, upstream_name: str) -> urllib.request.Request:
    base, key = provider.base_url.rstrip("/"), provider_api_key(provider)
    azure = provider.kind == ProviderKind.AZURE
    headers = {"api-key": key} if azure else {"Authorization": f"Bearer {key}"}
    v1 = not azure or provider.api_version in ("", "v1")
    prefix = f"{base}/openai/v1" if azure and v1 else base
    if not billable:
        url = f"{prefix}/models" if v1 else f"{base}/openai/models?api-version={quote(provider.api_version)}"
        return urllib.request.Request(url, headers=headers, method="GET")  # noqa: S310 - http(s) checked at entry
    body = {"model": upstream_name, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    url = f"{prefix}/chat/completions"
    if not v1:
        deployment = quote(upstream_name, safe="")
        url = f"{base}/openai/deployments/{deployment}/chat/completions?api-version={quote(provider.api_version)}"
    headers["Content-Type"] = "application/json"
    return urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")  # noqa: S310


def _redacted(text: str, provider: Provider) -> str:
    for secret in (provider_api_key(provider), provider.base_url.rstrip("/"), urlsplit(provider.base_url).netloc):
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text[:300]


def _probe(provider: Provider, *, billable: bool, upstream_name: str) -> CheckResult:
    if provider.kind == ProviderKind.SIMULATED:
        return CheckResult(ok=True, status=200, latency_ms=0, error="")
    started = time.perf_counter()
    status, error = None, ""
    try:
        request = _request(provider, billable=billable, upstream_name=upstream_name)
        with _opener.open(request, timeout=TIMEOUT_S) as response:
            status = response.status
    except urllib.error.HTTPError as failure:
        status, error = failure.code, f"the provider answered {failure.code}"
        try:
            detail = json.loads(failure.read(4000) or b"{}").get("error") or {}
            message = detail.get("message") if isinstance(detail, dict) else str(detail)
            error += f": {message}" if message else ""
        except (ValueError, AttributeError, OSError):
            pass
    except (urllib.error.URLError, OSError, ValueError) as failure:
        reason = getattr(failure, "reason", failure)
        error = f"the provider could not be reached ({type(reason).__name__}: {reason})"
    except Exception as failure:  # noqa: BLE001 - a test of a connection reports, it never fails
        error = f"the provider's answer could not be read ({type(failure).__name__})"
    latency = round((time.perf_counter() - started) * 1000)
    ok = status is not None and 200 <= status < 300
    return CheckResult(ok=ok, status=status, latency_ms=latency, error=_redacted(error, provider))


def provider_test(
    *, provider: Provider, billable: bool = False, upstream_name: str = "", actor: Actor = None
) -> CheckResult:
    """Calls the provider outside any transaction, then audits the outcome (`provider_tested`).
    A billable test needs an upstream name: the one given, else the provider's first deployment's."""
    if billable and not upstream_name:
        first = Deployment.objects.filter(provider=provider).in_order().first()
        upstream_name = first.upstream_name if first else ""
    if billable and not upstream_name:
        result = CheckResult(ok=False, status=None, latency_ms=None, error="no upstream name to call: give `model`")
    else:
        result = _probe(provider, billable=billable, upstream_name=upstream_name)
    audit_record(
        actor=actor,
        action="provider_tested",
        target=provider,
        after={**asdict(result), "billable": billable, "model": upstream_name if billable else ""},
    )
    return result

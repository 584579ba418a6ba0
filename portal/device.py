"""Device sign-in (RFC 8628) on the wire: the two OAuth endpoints a command-line tool calls, the
portal page where a member approves or denies, and the member API's approve and deny.

The OAuth endpoints answer in RFC 6749's error form (`{"error": ..., "error_description": ...}`,
400), not the gateway's envelope: that is what device-flow clients parse. They take a form body
(the RFC's encoding) or JSON, need no session and so no CSRF token.
"""

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from allocations import device
from allocations.exceptions import GatewayError, NotFound, TooManyAuthFailures
from allocations.models import Allocation, DeviceAuthorization, Member
from allocations.requests import MemberAPIRequest, MemberRequest
from lib.http import client_ip
from lib.serializers import StrictCharField, StrictInputSerializer, UnderscoreNamesMixin, parse_input

from .api import MemberAPIView, owned_allocations

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"


def _oauth(body: dict, status: int = 200, headers: dict | None = None) -> JsonResponse:
    response = JsonResponse(body, status=status, headers=headers)
    response["Cache-Control"] = "no-store"  # RFC 6749 section 5.1
    response["Pragma"] = "no-cache"
    return response


def _oauth_error(code: str, description: str, status: int = 400, headers: dict | None = None) -> JsonResponse:
    return _oauth({"error": code, "error_description": description}, status=status, headers=headers)


def _params(request: HttpRequest) -> dict | None:
    """The body's parameters, form-encoded or JSON; None when the body cannot be read."""
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None
    return request.POST.dict()


@csrf_exempt
@require_POST
def device_code(request: HttpRequest) -> JsonResponse:
    """RFC 8628 section 3.1-3.2: a new device code and user code."""
    params = _params(request)
    if params is None:
        return _oauth_error("invalid_request", "the body must be a form or a JSON object")
    label = params.get("label", "")
    if not isinstance(label, str):
        return _oauth_error("invalid_request", "label must be a string")
    ip = client_ip(request)
    if device.device_rate_exceeded(kind="code", ip=ip):
        return _oauth_error(
            "slow_down",
            "too many device codes from this address; wait",
            429,
            {"Retry-After": str(device.RATE_WINDOW_S)},
        )
    started = device.device_start(label=label, requested_from=ip)
    code = device.user_code_display(started.authorization.user_code)
    verification_uri = request.build_absolute_uri(reverse("portal:device"))
    return _oauth(
        {
            "device_code": started.device_code,
            "user_code": code,
            "verification_uri": verification_uri,
            "verification_uri_complete": f"{verification_uri}?user_code={code}",
            "expires_in": device.EXPIRES_IN_S,
            "interval": device.INTERVAL_S,
        }
    )


@csrf_exempt
@require_POST
def device_token(request: HttpRequest) -> JsonResponse:
    """RFC 8628 section 3.4-3.5: one poll of the token endpoint."""
    params = _params(request)
    if params is None:
        return _oauth_error("invalid_request", "the body must be a form or a JSON object")
    grant_type, code = params.get("grant_type"), params.get("device_code")
    if not grant_type or not isinstance(grant_type, str):
        return _oauth_error("invalid_request", "grant_type is required")
    if grant_type != GRANT_TYPE:
        return _oauth_error("unsupported_grant_type", f"grant_type must be {GRANT_TYPE}")
    if not code or not isinstance(code, str):
        return _oauth_error("invalid_request", "device_code is required")
    if device.device_rate_exceeded(kind="token", ip=client_ip(request)):
        return _oauth_error("slow_down", "too many polls from this address")
    try:
        return _oauth(device.device_poll(device_code=code))
    except device.DeviceGrantError as exc:
        return _oauth_error(exc.code, exc.description)


def _pending_or_none(request: HttpRequest, user_code: str) -> DeviceAuthorization:
    """The pending grant for a code the member entered; counts a wrong code against the address."""
    ip = client_ip(request)
    if device.device_rate_exceeded(kind="user_code", ip=ip, count=False):
        raise TooManyAuthFailures("too many wrong device codes from this address; wait a few minutes")
    try:
        return device.device_pending(user_code=user_code)
    except NotFound:
        device.device_rate_exceeded(kind="user_code", ip=ip)
        raise


def _choices(member: Member) -> QuerySet[Allocation]:
    return (
        Allocation.objects.owned_by(member)
        .exclude(status=Allocation.Status.REVOKED)
        .select_related("model")
        .order_by("created_at", "id")
    )


@never_cache
@login_required
def device_page(request: MemberRequest) -> HttpResponse:
    """Enter (or confirm) the code a tool shows, choose allocations, approve or deny."""
    if request.method == "POST":
        return _device_decide(request)
    user_code = request.GET.get("user_code", "").strip()
    context: dict[str, Any] = {"user_code": user_code, "authorization": None, "choices": _choices(request.user)}
    status = 200
    if user_code:
        try:
            context["authorization"] = _pending_or_none(request, user_code)
        except GatewayError as exc:
            context["error"] = _page_error(exc)
            status = exc.status
    return render(request, "portal/device.html", context, status=status)


def _page_error(exc: GatewayError) -> str:
    if exc.status == 429:
        return _("Too many wrong codes. Wait a few minutes and try again.")
    if exc.code == "invalid_transition":
        return _("This sign-in was already approved or denied.")
    if exc.code == "scope_conflict":
        return _("A key may hold at most one allocation per model.")
    if exc.code == "bad_request":
        return _("Choose at least one allocation.")
    return _("No pending sign-in has this code. Check it, or start again in your tool: codes expire after 10 minutes.")


def _device_decide(request: MemberRequest) -> HttpResponse:
    user_code = request.POST.get("user_code", "")
    decision = request.POST.get("decision")
    try:
        _pending_or_none(request, user_code)
        if decision == "approve":
            chosen = owned_allocations(request.user, request.POST.getlist("allocations"))
            device.device_approve(member=request.user, user_code=user_code, allocations=chosen)
            messages.success(request, _("Approved. Your tool now receives its key; you can close this page."))
        else:
            device.device_deny(member=request.user, user_code=user_code)
            messages.success(request, _("Denied. The tool gets no key."))
    except GatewayError as exc:
        context = {
            "user_code": user_code,
            "authorization": None if exc.code in ("not_found", "rate_limited") else _safe_pending(user_code),
            "choices": _choices(request.user),
            "error": _page_error(exc),
        }
        return render(request, "portal/device.html", context, status=exc.status)
    return redirect("portal:device")


def _safe_pending(user_code: str) -> DeviceAuthorization | None:
    try:
        return device.device_pending(user_code=user_code)
    except NotFound:
        return None


class DeviceDecisionOutput(serializers.Serializer):
    user_code = serializers.CharField()
    status = serializers.ChoiceField(choices=["approved", "denied"])


class DeviceApprovalOutput(UnderscoreNamesMixin, DeviceDecisionOutput):
    label_ = serializers.CharField(help_text="The key's name.")
    key_id = serializers.UUIDField()
    allocations = serializers.ListField(child=serializers.UUIDField())


class DeviceApprove(MemberAPIView):
    class InputSerializer(StrictInputSerializer):
        allocations = serializers.ListField(child=StrictCharField(), allow_empty=False, help_text="Allocation ids.")

    @extend_schema(request=InputSerializer, responses=DeviceApprovalOutput)
    def post(self, request: MemberAPIRequest, user_code: str) -> Response:
        data = parse_input(self.InputSerializer, request)
        _pending_or_none(request, user_code)
        chosen = owned_allocations(request.user, data["allocations"])
        done = device.device_approve(member=request.user, user_code=user_code, allocations=chosen)
        return Response(
            {
                "user_code": device.user_code_display(done.user_code),
                "status": done.status,
                "label": done.label,
                "key_id": str(done.api_key_id),
                "allocations": [str(a.pk) for a in chosen],
            }
        )


class DeviceDeny(MemberAPIView):
    @extend_schema(request=None, responses=DeviceDecisionOutput)
    def post(self, request: MemberAPIRequest, user_code: str) -> Response:
        _pending_or_none(request, user_code)
        done = device.device_deny(member=request.user, user_code=user_code)
        return Response({"user_code": device.user_code_display(done.user_code), "status": done.status})

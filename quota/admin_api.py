"""The admin REST API (`/api/admin/`, SPEC section 8).

Staff only: a staff session (with CSRF) or `Authorization: Bearer <admin token>`; nobody → 401,
a non-staff user → 403, every error in the one envelope. Views parse, call one service or
selector, and render; every write goes through the audited services.
"""

import contextlib
import csv
import io
import uuid

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_email
from django.http import Http404
from django.utils import timezone
from rest_framework import status
from rest_framework.parsers import JSONParser
from rest_framework.permissions import BasePermission
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from allocations import services
from allocations.exceptions import BadRequest
from allocations.models import Allocation, AuditEvent, CatalogModel, Member, ModelKind, Provider, ProviderKind

from . import admin_selectors as sel
from .models import PriceVersion
from .price_rows import model_by_slug, price_row_add


class IsStaff(BasePermission):
    def has_permission(self, request, view):
        user = request.user
        return bool(user and user.is_authenticated and user.is_active and user.is_staff)


class AdminAPIView(APIView):
    permission_classes = [IsStaff]
    renderer_classes = [JSONRenderer]
    parser_classes = [JSONParser]


def _body(request, allowed: set[str], required: tuple[str, ...] = ()) -> dict:
    data = request.data
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(unknown)}", fields={n: ["Unknown field."] for n in unknown})
    missing = [n for n in required if data.get(n) in (None, "")]
    if missing:
        raise BadRequest(
            f"missing fields: {', '.join(missing)}", fields={n: ["This field is required."] for n in missing}
        )
    return data


def _string(data: dict, name: str, default: str = "", max_length: int = 200) -> str:
    value = data.get(name, default)
    if value is None:
        value = default
    if not isinstance(value, str) or len(value) > max_length:
        raise BadRequest(f"{name} must be a string", fields={name: [f"A string of at most {max_length} characters."]})
    return value.strip()


def _bool(data: dict, name: str, default: bool = False) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false", fields={name: ["Must be a boolean."]})
    return value


def _list(request, queryset, to_json, *, time_field: str = "created_at") -> Response:
    params = request.query_params
    rows, next_cursor = sel.page(
        queryset, time_field=time_field, cursor=params.get("cursor"), limit=sel.parse_limit(params.get("limit"))
    )
    return Response({"results": to_json(rows), "next": next_cursor})


def _member_by(ref) -> Member:
    if not isinstance(ref, str) or not ref.strip():
        raise BadRequest("member must be a username or an id", fields={"member": ["A username or an id."]})
    query = Member.objects.filter(username=ref.strip().casefold())
    with contextlib.suppress(ValueError):
        query = query | Member.objects.filter(pk=uuid.UUID(ref))
    member = query.first()
    if member is None:
        raise BadRequest("no such member", fields={"member": ["No member with that username or id."]})
    return member


_model_by = model_by_slug


# --- members ---------------------------------------------------------------------------------------


class MemberList(AdminAPIView):
    def get(self, request):
        return _list(
            request, Member.objects.all(), lambda rows: [sel.member_json(m) for m in rows], time_field="date_joined"
        )

    def post(self, request):
        data = _body(request, {"username", "email", "password", "is_staff"}, required=("username",))
        password = data.get("password")
        if password is not None and (not isinstance(password, str) or len(password) > 128):
            raise BadRequest("invalid password", fields={"password": ["A string of at most 128 characters."]})
        email = _string(data, "email", max_length=254)
        if email:
            try:
                validate_email(email)
            except ValidationError:
                raise BadRequest("invalid email", fields={"email": ["Enter a valid email address."]}) from None
        member = services.member_create(
            username=_string(data, "username", max_length=150),
            email=email,
            password=password or None,
            is_staff=_bool(data, "is_staff"),
            actor=request.user,
        )
        return Response(sel.member_json(member), status=status.HTTP_201_CREATED)


class MemberDetail(AdminAPIView):
    def get(self, request, member_id):
        return Response(sel.member_json(sel.get_or_404(Member.objects, member_id)))

    def patch(self, request, member_id):
        member = sel.get_or_404(Member.objects, member_id)
        data = _body(request, {"is_active"}, required=("is_active",))
        member = services.member_set_active(member=member, is_active=_bool(data, "is_active"), actor=request.user)
        return Response(sel.member_json(member))


# --- providers, models, prices -----------------------------------------------------------------------


def _provider_input(data: dict) -> dict:
    kind = data.get("kind")
    if kind not in ProviderKind.values:
        raise BadRequest("invalid kind", fields={"kind": [f"One of: {', '.join(ProviderKind.values)}."]})
    base_url = _string(data, "base_url", max_length=500)
    if kind != ProviderKind.SIMULATED:
        try:
            URLValidator(schemes=["http", "https"])(base_url)
        except ValidationError:
            raise BadRequest("invalid base_url", fields={"base_url": ["An http(s) URL."]}) from None
    name = _string(data, "name", max_length=100)
    if Provider.objects.filter(name=name).exists():
        raise BadRequest("name is taken", fields={"name": ["A provider with that name already exists."]})
    return {
        "name": name,
        "kind": kind,
        "base_url": base_url,
        "api_key": _string(data, "api_key", max_length=1000),
        "api_version": _string(data, "api_version", max_length=40),
    }


class ProviderList(AdminAPIView):
    def get(self, request):
        return _list(request, Provider.objects.all(), lambda rows: [sel.provider_json(p) for p in rows])

    def post(self, request):
        data = _body(request, {"name", "kind", "base_url", "api_key", "api_version"}, required=("name", "kind"))
        provider = services.provider_create(**_provider_input(data), actor=request.user)
        return Response(sel.provider_json(provider), status=status.HTTP_201_CREATED)


class ModelList(AdminAPIView):
    def get(self, request):
        queryset = CatalogModel.objects.select_related("provider")
        return _list(request, queryset, lambda rows: [sel.model_json(m) for m in rows])

    def post(self, request):
        data = _body(
            request,
            {"slug", "provider", "upstream_name", "kind", "display_name", *CatalogModel.LIMIT_FIELDS},
            required=("slug", "provider", "upstream_name", "kind"),
        )
        if data["kind"] not in ModelKind.values:
            raise BadRequest("invalid kind", fields={"kind": [f"One of: {', '.join(ModelKind.values)}."]})
        slug = _string(data, "slug")
        if CatalogModel.objects.filter(slug=slug).exists():
            raise BadRequest("slug is taken", fields={"slug": ["A model with that slug already exists."]})
        model = services.model_create(
            slug=slug,
            provider=self._provider(data["provider"]),
            upstream_name=_string(data, "upstream_name"),
            kind=data["kind"],
            display_name=_string(data, "display_name"),
            limits=_limits(data),
            actor=request.user,
        )
        return Response(sel.model_json(model), status=status.HTTP_201_CREATED)

    @staticmethod
    def _provider(ref) -> Provider:
        provider = Provider.objects.filter(name=ref).first() if isinstance(ref, str) else None
        if provider is None and isinstance(ref, str):
            with contextlib.suppress(ValueError):
                provider = Provider.objects.filter(pk=uuid.UUID(ref)).first()
        if provider is None:
            raise BadRequest("no such provider", fields={"provider": ["No provider with that name or id."]})
        return provider


class ModelDetail(AdminAPIView):
    def get(self, request, model_id):
        return Response(sel.model_json(sel.get_or_404(CatalogModel.objects.select_related("provider"), model_id)))

    def patch(self, request, model_id):
        model = sel.get_or_404(CatalogModel.objects.select_related("provider"), model_id)
        data = _body(request, services.MODEL_UPDATABLE)
        model = services.model_update(model=model, changes=dict(data), actor=request.user)
        return Response(sel.model_json(model))


def _limits(data: dict) -> dict:
    return {name: data[name] for name in CatalogModel.LIMIT_FIELDS if name in data}


class PriceList(AdminAPIView):
    def get(self, request):
        queryset = PriceVersion.objects.select_related("model")
        if request.query_params.get("model"):
            queryset = queryset.filter(model__slug=request.query_params["model"])
        return _list(request, queryset, lambda rows: [sel.price_json(p) for p in rows])

    def post(self, request):
        version = price_row_add(request.data, actor=request.user)
        return Response(sel.price_json(version), status=status.HTTP_201_CREATED)


# --- allocations -----------------------------------------------------------------------------------------

ALLOCATIONS = Allocation.objects.select_related("member", "model")


class AllocationList(AdminAPIView):
    def get(self, request):
        queryset = ALLOCATIONS
        params = request.query_params
        if params.get("member"):
            queryset = queryset.filter(member=_member_by(params["member"]))
        if params.get("model"):
            queryset = queryset.filter(model__slug=params["model"])
        if params.get("status"):
            queryset = queryset.filter(status=params["status"])
        return _list(request, queryset, sel.allocations_json)

    def post(self, request):
        data = _body(
            request,
            {
                "member",
                "model",
                "display_name",
                "quota_tokens_per_month",
                "quota_cost_usd_per_month",
                "is_service_allocation",
                *Allocation.LIMIT_FIELDS,
            },
            required=("member", "model"),
        )
        allocation, key, plaintext = services.allocation_create(
            member=_member_by(data["member"]),
            model=_model_by(data["model"]),
            display_name=_string(data, "display_name"),
            quota_tokens_per_month=data.get("quota_tokens_per_month"),
            quota_cost_usd_per_month=data.get("quota_cost_usd_per_month"),
            is_service_allocation=_bool(data, "is_service_allocation"),
            limits=_limits(data),
            actor=request.user,
        )
        body = {**sel.allocation_json(allocation), "key": plaintext, "key_id": str(key.pk)}
        return Response(body, status=status.HTTP_201_CREATED)


class AllocationDetail(AdminAPIView):
    def get(self, request, allocation_id):
        return Response(sel.allocation_json(sel.get_or_404(ALLOCATIONS, allocation_id)))

    def patch(self, request, allocation_id):
        allocation = sel.get_or_404(ALLOCATIONS, allocation_id)
        if not isinstance(request.data, dict):
            raise BadRequest("the body must be a JSON object")
        allocation = services.allocation_update(
            allocation=allocation,
            changes=dict(request.data),
            actor=request.user,
            source_ip=request.META.get("REMOTE_ADDR"),
        )
        return Response(sel.allocation_json(allocation))


ACTIONS = {
    "pause": lambda a, actor: services.allocation_pause(allocation=a, by="admin", actor=actor),
    "resume": lambda a, actor: services.allocation_resume(allocation=a, by="admin", actor=actor),
    "revoke": lambda a, actor: services.allocation_revoke(allocation=a, actor=actor),
    "unquarantine": lambda a, actor: services.allocation_unquarantine(allocation=a, actor=actor),
}


class AllocationAction(AdminAPIView):
    def post(self, request, allocation_id, action):
        if action not in ACTIONS:
            raise Http404
        allocation = sel.get_or_404(ALLOCATIONS, allocation_id)
        ACTIONS[action](allocation, request.user)
        return Response(sel.allocation_json(sel.get_or_404(ALLOCATIONS, allocation_id)))


# --- usage and audit -----------------------------------------------------------------------------------


class CSVRenderer(BaseRenderer):
    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        view = (renderer_context or {}).get("view")
        columns = getattr(view, "csv_columns", None) or sorted({k for row in data.get("results", []) for k in row})
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in data.get("results", []):
            writer.writerow({k: _csv_safe(row.get(k)) for k in columns})
        return out.getvalue().encode(self.charset)


def _csv_safe(value):
    # Spreadsheets run cells that start with these as formulas (CSV injection).
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


class UsageReport(AdminAPIView):
    renderer_classes = [JSONRenderer, CSVRenderer]

    def get(self, request):
        params = request.query_params
        group_by = params.get("group_by") or "member"
        start, end = sel.usage_range(start=params.get("from"), end=params.get("to"), now=timezone.now())
        results = sel.usage_report(group_by=group_by, start=start, end=end)
        self.csv_columns = sel.usage_columns(group_by)
        return Response({"group_by": group_by, "from": start.isoformat(), "to": end.isoformat(), "results": results})

    def finalize_response(self, request, response, *args, **kwargs):
        if response.status_code >= 400:  # errors keep the JSON envelope whatever the format asked for
            request.accepted_renderer, request.accepted_media_type = JSONRenderer(), "application/json"
        elif isinstance(getattr(request, "accepted_renderer", None), CSVRenderer):
            group_by = response.data.get("group_by", "usage")
            response["Content-Disposition"] = f'attachment; filename="usage-by-{group_by}.csv"'
        return super().finalize_response(request, response, *args, **kwargs)


class AuditList(AdminAPIView):
    def get(self, request):
        queryset = AuditEvent.objects.all()
        for name in ("action", "target_type", "target_id"):
            if request.query_params.get(name):
                queryset = queryset.filter(**{name: request.query_params[name]})
        return _list(request, queryset, lambda rows: [sel.audit_json(e) for e in rows])

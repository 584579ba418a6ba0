"""Admin API for self-service: the model's switch and default caps (on PATCH /api/admin/models/{id}),
the unlock of a re-claim lock, and the scope of any key (`/api/admin/keys/{id}`)."""

import uuid
from collections.abc import Iterable

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from allocations import selfservice
from allocations.exceptions import BadRequest
from allocations.key_scope import api_key_set_scope
from allocations.models import Allocation, ApiKey, CatalogModel, Member
from allocations.reclaim import reclaim_unlock
from allocations.requests import MemberAPIRequest
from lib.serializers import (
    DecimalInputField,
    MoneyField,
    StrictBooleanField,
    StrictCharField,
    StrictInputSerializer,
    WholeNumberInputField,
    parse_input,
)

from . import selectors as sel
from .base import AdminAPIView


class SelfServiceInputMixin(serializers.Serializer):
    self_service = StrictBooleanField(required=False, help_text="Members may claim the model from the catalogue.")
    self_service_quota_tokens = WholeNumberInputField(
        required=False, allow_null=True, help_text="Monthly token quota of a claim; null = none."
    )
    self_service_cost_usd = DecimalInputField(
        required=False, allow_null=True, help_text="Monthly cost cap (USD) of a claim; null = none."
    )


class SelfServiceOutputMixin(serializers.Serializer):
    self_service = serializers.BooleanField()
    self_service_quota_tokens = serializers.IntegerField(allow_null=True)
    self_service_cost_usd = MoneyField(allow_null=True)


def split_self_service(changes: dict) -> tuple[dict, dict]:
    """(the self-service fields among the parsed ones, the others)."""
    fields = selfservice.SELF_SERVICE_FIELDS
    return {f: v for f, v in changes.items() if f in fields}, {f: v for f, v in changes.items() if f not in fields}


def model_by(ref: str) -> CatalogModel:
    found = CatalogModel.objects.filter(slug=ref).first()
    return found or sel.get_or_404(CatalogModel.objects, ref)


class UnlockOutput(serializers.Serializer):
    member = serializers.UUIDField()
    model = serializers.CharField()
    locked = serializers.BooleanField()


class ReclaimUnlock(AdminAPIView):
    @extend_schema(request=None, responses=UnlockOutput)
    def post(self, request: MemberAPIRequest, member_id: str, model: str) -> Response:
        member = sel.get_or_404(Member.objects, member_id)
        catalogue_model = model_by(model)
        reclaim_unlock(member=member, model=catalogue_model, actor=request.user)
        return Response({"member": str(member.pk), "model": catalogue_model.slug, "locked": False})


class KeyScopeInput(StrictInputSerializer):
    add = serializers.ListField(child=StrictCharField(), required=False, help_text="Allocation ids to add.")
    remove = serializers.ListField(child=StrictCharField(), required=False, help_text="Allocation ids to remove.")


def _allocations(ids: Iterable[object], field: str) -> list[Allocation]:
    found = []
    for ref in dict.fromkeys(ids):
        pk = _uuid_or_none(ref)
        allocation = Allocation.objects.filter(pk=pk).first() if pk else None
        if allocation is None:
            raise BadRequest("unknown allocation", fields={field: [f"No allocation has the id {ref}."]})
        found.append(allocation)
    return found


def _uuid_or_none(ref: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(ref))
    except ValueError:
        return None


def key_body(key: ApiKey) -> dict:
    scopes = key.scopes.select_related("allocation__model").order_by("allocation__created_at")
    return {
        "id": str(key.pk),
        "name": key.name,
        "prefix": key.prefix,
        "member": key.member.username,
        "allocations": [str(s.allocation_id) for s in scopes],
        "models": [s.allocation.model.slug for s in scopes],
    }


class KeyScopeOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    prefix = serializers.CharField()
    member = serializers.CharField(help_text="The owner's username.")
    allocations = serializers.ListField(child=serializers.UUIDField())
    models = serializers.ListField(child=serializers.CharField())


class KeyScopeDetail(AdminAPIView):
    """Any member's key: read its scope, or change it with `add` and `remove`."""

    @extend_schema(responses=KeyScopeOutput)
    def get(self, request: MemberAPIRequest, key_id: str) -> Response:
        return Response(key_body(sel.get_or_404(ApiKey.objects.select_related("member"), key_id)))

    @extend_schema(request=KeyScopeInput, responses=KeyScopeOutput)
    def patch(self, request: MemberAPIRequest, key_id: str) -> Response:
        key = sel.get_or_404(ApiKey.objects.select_related("member"), key_id)
        data = parse_input(KeyScopeInput, request)
        add, remove = _allocations(data.get("add", []), "add"), _allocations(data.get("remove", []), "remove")
        api_key_set_scope(key=key, add=add, remove=remove, actor=request.user)
        return Response(key_body(key))

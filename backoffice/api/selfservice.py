"""Admin API for self-service: the model's switch and default caps (on PATCH /api/admin/models/{id})
and the unlock of a re-claim lock."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from allocations import selfservice
from allocations.models import CatalogModel, Member
from allocations.reclaim import reclaim_unlock
from allocations.serializers import DecimalInputField, MoneyField, StrictBooleanField, WholeNumberInputField

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


class ReclaimUnlock(AdminAPIView):
    @extend_schema(request=None, responses={200: dict})
    def post(self, request, member_id, model):
        member = sel.get_or_404(Member.objects, member_id)
        catalogue_model = model_by(model)
        reclaim_unlock(member=member, model=catalogue_model, actor=request.user)
        return Response({"member": str(member.pk), "model": catalogue_model.slug, "locked": False})

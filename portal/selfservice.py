"""The self-service catalogue (SPEC 10): the models a member may claim, the claim itself (member
API and portal page) and the key of a claim, shown once.

The portal page follows post/redirect/get: the claim's plaintext key waits in the session for the
one GET that shows it, and is gone after.
"""

from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from allocations import selfservice, services
from allocations.access import member_may_use
from allocations.exceptions import GatewayError
from allocations.key_scope import api_key_set_scope
from allocations.models import Allocation, CatalogModel, Member, ReclaimLock
from allocations.requests import MemberAPIRequest, MemberRequest
from lib.serializers import StrictCharField, StrictInputSerializer, parse_input
from quota.models import PriceVersion
from quota.selectors import price_describe

from . import cards
from . import selectors as portal_selectors
from .api import AllocationList, KeyDetail, MemberAPIView, _card, owned_allocations
from .serializers import AllocationCardOutput, KeyOutput

CLAIMED_KEY = "portal_claimed_key"


@dataclass(frozen=True)
class CatalogueEntry:
    model: CatalogModel
    price: PriceVersion | None
    state: str


def catalogue_of(*, member: Member) -> list[CatalogueEntry]:
    """The self-service models `member` may use, each with its price in force and claim state."""
    offered: QuerySet[CatalogModel] = CatalogModel.objects.filter(self_service=True, is_active=True).order_by("slug")
    models = [m for m in offered if member_may_use(member, m)]
    ids = [m.pk for m in models]
    held = set(
        Allocation.objects.filter(member=member, model_id__in=ids)
        .exclude(status=Allocation.Status.REVOKED)
        .values_list("model_id", flat=True)
    )
    locked = set(ReclaimLock.objects.filter(member=member, model_id__in=ids).values_list("model_id", flat=True))
    prices = cards._prices_in_force(set(ids), now=timezone.now())
    return [
        CatalogueEntry(
            model=m,
            price=prices.get(m.pk),
            state=selfservice.claim_state(member=member, model=m, held_ids=held, locked_ids=locked),
        )
        for m in models
    ]


class ClaimableModelOutput(serializers.Serializer):
    model = serializers.CharField(source="model.slug")
    display_name = serializers.SerializerMethodField()
    kind = serializers.CharField(source="model.kind")
    price = serializers.SerializerMethodField()
    state = serializers.ChoiceField(choices=["claimable", "held", "reclaim_locked"])

    def get_display_name(self, entry: CatalogueEntry) -> str:
        return entry.model.display_name or entry.model.slug

    def get_price(self, entry: CatalogueEntry) -> dict | None:
        return price_describe(entry.price)


class ClaimableModels(MemberAPIView):
    @extend_schema(responses=ClaimableModelOutput(many=True))
    def get(self, request: MemberAPIRequest) -> Response:
        entries = catalogue_of(member=request.user)
        return Response({"results": ClaimableModelOutput(entries, many=True).data})


class ClaimOutput(serializers.Serializer):
    allocation = AllocationCardOutput(help_text="The new allocation, with `origin`: self_service.")
    key = serializers.CharField(help_text="The default key's plaintext, shown once.")


class AllocationListAndClaim(AllocationList):
    """GET: the member's allocations; POST `{"model": slug}`: claim a self-service model."""

    class ClaimInput(StrictInputSerializer):
        model = StrictCharField(max_length=200, help_text="The model's slug.")

    @extend_schema(request=ClaimInput, responses={201: ClaimOutput})
    def post(self, request: MemberAPIRequest) -> Response:
        data = parse_input(self.ClaimInput, request)
        model = selfservice.model_by_slug(data["model"])
        allocation, _key, plaintext = selfservice.claim(member=request.user, model=model)
        body = {"allocation": {**_card(request.user, allocation), "origin": allocation.origin}, "key": plaintext}
        return Response(body, status=status.HTTP_201_CREATED)


@never_cache
@login_required
def catalogue_page(request: MemberRequest) -> HttpResponse:
    claimed = request.session.pop(CLAIMED_KEY, None)
    context = {
        "entries": catalogue_of(member=request.user),
        "claimed": claimed,
        "base_url": request.build_absolute_uri("/v1"),
    }
    response = render(request, "portal/catalogue.html", context)
    if claimed:
        response["Cache-Control"] = "no-store"
    return response


@require_POST
@login_required
def catalogue_claim(request: MemberRequest) -> HttpResponse:
    try:
        model = selfservice.model_by_slug(request.POST.get("model", ""))
        allocation, _key, plaintext = selfservice.claim(member=request.user, model=model)
    except GatewayError as exc:
        messages.error(request, _claim_message(exc))
        return redirect("portal:catalogue")
    request.session[CLAIMED_KEY] = {
        "key": plaintext,
        "model": allocation.model.slug,
        "name": allocation.display_name or allocation.model.slug,
        "kind": allocation.model.kind,
    }
    return redirect("portal:catalogue")


def _claim_message(exc: GatewayError) -> str:
    return {
        "already_claimed": _("You already hold an allocation of this model."),
        "reclaim_locked": _("An admin revoked your allocation of this model. Ask an admin to unlock it."),
        "model_forbidden": _("You may not use this model."),
        "model_not_self_service": _("This model is not offered for self-service."),
    }.get(exc.code, _("This model cannot be claimed."))


class KeyDetailWithScope(KeyDetail):
    """GET/PATCH/DELETE of one key; PATCH also takes `add` and `remove` (allocation ids)."""

    class InputSerializer(KeyDetail.InputSerializer):
        add = serializers.ListField(child=StrictCharField(), required=False, help_text="Allocation ids to add.")
        remove = serializers.ListField(child=StrictCharField(), required=False, help_text="Allocation ids to remove.")

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if not attrs:
                raise serializers.ValidationError({"name": ["This field is required."]})
            return attrs

    @extend_schema(request=InputSerializer, responses=KeyOutput)
    def patch(self, request: MemberAPIRequest, key_id: str) -> Response:
        key = portal_selectors.key_owned(member=request.user, key_id=key_id)
        data = parse_input(self.InputSerializer, request)
        add = owned_allocations(request.user, data.get("add", []))
        remove = owned_allocations(request.user, data.get("remove", []))
        with transaction.atomic():  # a refused part leaves the whole key as it was
            if add or remove:
                api_key_set_scope(key=key, add=add, remove=remove, actor=request.user)
            if "name" in data:
                key = services.api_key_rename(key=key, name=data["name"], actor=request.user)
            if "expires_at" in data:
                key = services.api_key_set_expiry(key=key, expires_at=data["expires_at"], actor=request.user)
        return Response(KeyOutput(portal_selectors.key_owned(member=request.user, key_id=key_id)).data)

"""Admin API: groups, their members and rules (`/api/admin/groups`, `/api/admin/group-rules`), and
the model access answers (`/api/admin/models/{id}/access`, `/api/admin/members/{id}/access`)."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from allocations import group_rules, groups
from allocations.exceptions import BadRequest
from allocations.model_access import member_access, model_members_allowed
from allocations.models import CatalogModel, Group, GroupRule, Member
from allocations.requests import MemberAPIRequest
from lib.serializers import (
    DecimalInputField,
    StrictBooleanField,
    StrictCharField,
    StrictInputSerializer,
    WholeNumberInputField,
    parse_input,
)
from quota.group_budgets import with_spend

from . import selectors as sel
from .base import PAGE_PARAMETERS, AdminAPIView, list_response
from .serializers import GroupOutput, GroupRuleOutput, page_of

BUDGET = "The group's monthly budget (null: none); its members' calls are refused at it."
REFS = serializers.ListField(child=StrictCharField(max_length=200), required=False, default=list)


class GroupInput(StrictInputSerializer):
    name = StrictCharField(max_length=100, required=False)
    slug = StrictCharField(max_length=100, required=False, help_text="Default: from the name.")
    quota_cost_usd_per_month = DecimalInputField(required=False, allow_null=True, help_text=BUDGET)
    quota_tokens_per_month = WholeNumberInputField(required=False, allow_null=True, help_text=BUDGET)


class GroupList(AdminAPIView):
    @extend_schema(parameters=PAGE_PARAMETERS, responses=page_of(GroupOutput, "GroupPage"))
    def get(self, request: MemberAPIRequest) -> Response:
        return list_response(request, with_spend(Group.objects.prefetch_related("members")), GroupOutput)

    @extend_schema(request=GroupInput, responses={201: GroupOutput})
    def post(self, request: MemberAPIRequest) -> Response:
        group = groups.group_create(data=parse_input(GroupInput, request), actor=request.user)
        return Response(GroupOutput(group).data, status=status.HTTP_201_CREATED)


class GroupDetail(AdminAPIView):
    @extend_schema(responses=GroupOutput)
    def get(self, request: MemberAPIRequest, group_id: str) -> Response:
        return Response(GroupOutput(sel.get_or_404(Group.objects, group_id)).data)

    @extend_schema(request=GroupInput, responses=GroupOutput)
    def patch(self, request: MemberAPIRequest, group_id: str) -> Response:
        group = sel.get_or_404(Group.objects, group_id)
        group = groups.group_update(group=group, changes=parse_input(GroupInput, request), actor=request.user)
        return Response(GroupOutput(group).data)

    @extend_schema(responses={204: None})
    def delete(self, request: MemberAPIRequest, group_id: str) -> Response:
        groups.group_delete(group=sel.get_or_404(Group.objects, group_id), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class GroupMembers(AdminAPIView):
    class InputSerializer(StrictInputSerializer):
        add = REFS
        remove = serializers.ListField(child=StrictCharField(max_length=200), required=False, default=list)

    @extend_schema(request=InputSerializer, responses=GroupOutput)
    def post(self, request: MemberAPIRequest, group_id: str) -> Response:
        group = sel.get_or_404(Group.objects, group_id)
        data = parse_input(self.InputSerializer, request)
        group = groups.group_members_change(group=group, add=data["add"], remove=data["remove"], actor=request.user)
        return Response(GroupOutput(group).data)


class GroupRuleInput(StrictInputSerializer):
    order = serializers.IntegerField(required=False, min_value=-(2**31), max_value=2**31 - 1)
    matcher = serializers.ChoiceField(choices=GroupRule.Matcher.choices, required=False)
    pattern = StrictCharField(max_length=1000, required=False, allow_blank=True)
    group = StrictCharField(max_length=200, required=False, help_text="The group's id or slug.")
    enabled = StrictBooleanField(required=False)


def _rule_data(request: Request) -> dict:
    data = parse_input(GroupRuleInput, request)
    if "group" in data:
        data["group"] = groups.group_ref(data["group"]) or data["group"]
    return data


RULES = GroupRule.objects.select_related("group")


class GroupRuleList(AdminAPIView):
    @extend_schema(responses=GroupRuleOutput(many=True))
    def get(self, request: MemberAPIRequest) -> Response:
        return Response(
            {"results": GroupRuleOutput(RULES.order_by("order", "created_at"), many=True).data, "next": None}
        )

    @extend_schema(request=GroupRuleInput, responses={201: GroupRuleOutput})
    def post(self, request: MemberAPIRequest) -> Response:
        rule = group_rules.group_rule_create(data=_rule_data(request), actor=request.user)
        return Response(GroupRuleOutput(rule).data, status=status.HTTP_201_CREATED)


class GroupRuleDetail(AdminAPIView):
    @extend_schema(responses=GroupRuleOutput)
    def get(self, request: MemberAPIRequest, rule_id: str) -> Response:
        return Response(GroupRuleOutput(sel.get_or_404(RULES, rule_id)).data)

    @extend_schema(request=GroupRuleInput, responses=GroupRuleOutput)
    def patch(self, request: MemberAPIRequest, rule_id: str) -> Response:
        rule = sel.get_or_404(RULES, rule_id)
        rule = group_rules.group_rule_update(rule=rule, changes=_rule_data(request), actor=request.user)
        return Response(GroupRuleOutput(rule).data)

    @extend_schema(responses={204: None})
    def delete(self, request: MemberAPIRequest, rule_id: str) -> Response:
        group_rules.group_rule_delete(rule=sel.get_or_404(RULES, rule_id), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class GroupRuleTest(AdminAPIView):
    class InputSerializer(StrictInputSerializer):
        email = StrictCharField(max_length=254, required=False, allow_blank=True, default="")
        username = StrictCharField(max_length=150, required=False, allow_blank=True, default="")

    @extend_schema(request=InputSerializer, responses={200: dict})
    def post(self, request: MemberAPIRequest) -> Response:
        data = parse_input(self.InputSerializer, request)
        found = group_rules.group_rules_match(email=data["email"], username=data["username"])
        rule = found.rule
        return Response(
            {
                "matched": rule is not None,
                "rule": GroupRuleOutput(rule).data if rule else None,
                "group": GroupOutput(rule.group).data if rule else None,
                "failed_rules": [{"id": str(r.pk), "error": error} for r, error in found.failed],
            }
        )


class ModelAccess(AdminAPIView):
    @extend_schema(responses={200: dict})
    def get(self, request: MemberAPIRequest, model_id: str) -> Response:
        model = sel.get_or_404(CatalogModel.objects.all(), model_id)
        members = model_members_allowed(model=model)
        return Response(
            {
                "model": model.slug,
                **groups.access_snapshot(model),
                "members": [{"id": str(m.pk), "username": m.username} for m in members],
            }
        )


class MemberAccess(AdminAPIView):
    @extend_schema(
        parameters=[OpenApiParameter("model", str, description="The model's slug or id.")], responses={200: dict}
    )
    def get(self, request: MemberAPIRequest, member_id: str) -> Response:
        member = sel.get_or_404(Member.objects, member_id)
        ref = request.query_params.get("model", "")
        model = CatalogModel.objects.filter(slug=ref).first() or _model_by_id(ref)
        if model is None:
            raise BadRequest("no such model", fields={"model": ["A model's slug or id is required."]})
        decision = member_access(member=member, model=model)
        return Response(
            {"member": member.username, "model": model.slug, "allowed": decision.allowed, "reasons": decision.reasons}
        )


def _model_by_id(ref: str) -> CatalogModel | None:
    try:
        return sel.get_or_404(CatalogModel.objects.all(), ref)
    except Exception:  # noqa: BLE001 - any unknown reference is the same 400
        return None

"""Admin API: members (`/api/admin/members`) and admin tokens (`/api/admin/tokens`)."""

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response

from allocations import invitations, services
from allocations.members import MEMBER_UPDATABLE
from allocations.models import AdminToken, Member
from allocations.requests import MemberAPIRequest
from lib.serializers import (
    StrictBooleanField,
    StrictCharField,
    StrictEmailField,
    StrictInputSerializer,
    parse_input,
)

from . import selectors as sel
from .base import PAGE_PARAMETERS, AdminAPIView, list_response
from .serializers import AdminTokenOutput, MemberOutput, page_of


class MemberList(AdminAPIView):
    class InputSerializer(StrictInputSerializer):
        username = StrictCharField(max_length=150)
        email = StrictEmailField(required=False, allow_blank=True, max_length=254)
        password = StrictCharField(
            required=False, allow_null=True, allow_blank=True, max_length=128, trim_whitespace=False
        )
        is_staff = StrictBooleanField(required=False, default=False)

    @extend_schema(parameters=PAGE_PARAMETERS, responses=page_of(MemberOutput, "MemberPage"))
    def get(self, request: MemberAPIRequest) -> Response:
        members = Member.objects.prefetch_related("org_groups")
        return list_response(request, members, MemberOutput, time_field="date_joined")

    @extend_schema(request=InputSerializer, responses={201: MemberOutput})
    def post(self, request: MemberAPIRequest) -> Response:
        data = parse_input(self.InputSerializer, request)
        member = services.member_create(
            username=data["username"],
            email=data.get("email", ""),
            password=data.get("password") or None,
            is_staff=data["is_staff"],
            actor=request.user,
        )
        return Response(MemberOutput(member).data, status=status.HTTP_201_CREATED)


class MemberDetail(AdminAPIView):
    class InputSerializer(StrictInputSerializer):
        is_active = StrictBooleanField(required=False, help_text="false disables the member: their keys stop at once.")
        is_staff = StrictBooleanField(required=False)
        email = StrictEmailField(required=False, allow_blank=True, max_length=254)

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if not attrs:
                raise serializers.ValidationError({f: ["Give at least one field to change."] for f in MEMBER_UPDATABLE})
            return attrs

    @extend_schema(responses=MemberOutput)
    def get(self, request: MemberAPIRequest, member_id: str) -> Response:
        return Response(MemberOutput(sel.get_or_404(Member.objects, member_id)).data)

    @extend_schema(request=InputSerializer, responses=MemberOutput)
    def patch(self, request: MemberAPIRequest, member_id: str) -> Response:
        member = sel.get_or_404(Member.objects, member_id)
        changes = parse_input(self.InputSerializer, request)
        member = services.member_update(member=member, changes=changes, actor=request.user)
        return Response(MemberOutput(member).data)


class InvitationOutput(serializers.Serializer):
    invitation_url = serializers.URLField()
    expires_at = serializers.DateTimeField()
    mailed = serializers.BooleanField(help_text="Whether the link was mailed to the member.")


class MemberInvitation(AdminAPIView):
    """A single-use link (48 h) with which the member sets a password and signs in."""

    @extend_schema(request=None, responses={201: InvitationOutput})
    def post(self, request: MemberAPIRequest, member_id: str) -> Response:
        member = sel.get_or_404(Member.objects, member_id)

        def url_for(token: str) -> str:
            return request.build_absolute_uri(reverse("invitation_accept", args=[token]))

        issued = invitations.invitation_issue(member=member, url_for=url_for, actor=request.user)
        body = {
            "invitation_url": url_for(issued.token),
            "expires_at": issued.invitation.expires_at.isoformat(),
            "mailed": issued.mailed,
        }
        return Response(body, status=status.HTTP_201_CREATED)


TOKENS = AdminToken.objects.select_related("user")


class AdminTokenList(AdminAPIView):
    @extend_schema(parameters=PAGE_PARAMETERS, responses=page_of(AdminTokenOutput, "AdminTokenPage"))
    def get(self, request: MemberAPIRequest) -> Response:
        return list_response(request, TOKENS, AdminTokenOutput)


class AdminTokenDetail(AdminAPIView):
    @extend_schema(responses=AdminTokenOutput)
    def get(self, request: MemberAPIRequest, token_id: str) -> Response:
        return Response(AdminTokenOutput(sel.get_or_404(TOKENS, token_id)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: MemberAPIRequest, token_id: str) -> Response:
        services.admin_token_revoke(token=sel.get_or_404(TOKENS, token_id), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

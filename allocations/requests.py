"""The request of a signed-in member: what a view behind `login_required` (or the staff admin,
or DRF's IsAuthenticated) is handed. Django types `request.user` as member-or-anonymous; these
views never see an anonymous one."""

from django.http import HttpRequest
from rest_framework.request import Request

from .models import Member


class MemberRequest(HttpRequest):
    user: Member


class MemberAPIRequest(Request):
    """A DRF request past IsAuthenticated (or the staff permission): its user is a member."""

    user: Member  # type: ignore[assignment]

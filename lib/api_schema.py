"""How the JSON APIs describe themselves in OpenAPI 3 (drf-spectacular, `/api/schema/`).

Operation ids are built from the whole path, parameters included, so a list and its detail
never collide; every operation documents the error envelope for its error statuses; the admin
bearer token is declared as an HTTP bearer scheme (allocations.api_auth, where it is defined).
"""

import re
from typing import Any, Literal

from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers

from .serializers import UnderscoreNamesMixin

ERROR_STATUSES = {
    "400": "Invalid input: `fields` names each bad field.",
    "401": "No or bad credentials.",
    "403": "Not allowed (or no CSRF token with a session).",
    "404": "No such object, or not yours.",
    "409": "The object's state refuses the change.",
}


class ErrorDetail(UnderscoreNamesMixin, serializers.Serializer):
    """`fields` (validation errors only) maps each bad field to its messages."""

    code = serializers.CharField()
    message = serializers.CharField()
    type = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    request_id = serializers.CharField()
    fields_ = serializers.DictField(child=serializers.ListField(child=serializers.CharField()), required=False)


class ErrorEnvelope(serializers.Serializer):
    """The one error envelope of every JSON API (SPEC section 3)."""

    error = ErrorDetail()


class GatewayAutoSchema(AutoSchema):
    def _get_response_bodies(self, direction: Literal["request", "response"] = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        for status, description in ERROR_STATUSES.items():
            if status not in responses:
                responses[status] = {
                    **self._get_response_for_code(ErrorEnvelope, status, direction=direction),
                    "description": description,
                }
        return responses

    def get_operation_id(self) -> str:
        path = self.path.removeprefix("/api/").strip("/")
        words = [f"by_{part[1:-1]}" if part.startswith("{") else part for part in path.split("/")]
        return re.sub(r"\W+", "_", "_".join([*words, self.method.lower()]))

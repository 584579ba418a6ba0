"""The one error envelope for every JSON API (SPEC section 3), for DRF views."""

import uuid
from typing import Any

from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response

from .errors import GatewayError
from .http import request_id_of

DRF_CODES = {
    status.HTTP_400_BAD_REQUEST: ("bad_request", "invalid_request_error"),
    status.HTTP_401_UNAUTHORIZED: ("unauthorized", "authentication_error"),
    status.HTTP_403_FORBIDDEN: ("forbidden", "permission_error"),
    status.HTTP_404_NOT_FOUND: ("not_found", "invalid_request_error"),
    status.HTTP_405_METHOD_NOT_ALLOWED: ("method_not_allowed", "invalid_request_error"),
    status.HTTP_415_UNSUPPORTED_MEDIA_TYPE: ("bad_request", "invalid_request_error"),
    status.HTTP_429_TOO_MANY_REQUESTS: ("rate_limited", "rate_limit_error"),
}


def error_body(*, code: str, message: str, type_: str, request_id: str, fields: dict | None = None) -> dict:
    error: dict[str, object] = {
        "code": code,
        "message": message,
        "type": type_,
        "param": None,
        "request_id": request_id,
    }
    if fields:
        error["fields"] = fields
    return {"error": error}


def _flatten_fields(detail: Any) -> dict:
    if isinstance(detail, dict):
        return {k: [str(x) for x in (v if isinstance(v, list) else [v])] for k, v in detail.items()}
    return {}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    request = context.get("request")
    rid = request_id_of(request) if request is not None else str(uuid.uuid4())
    if isinstance(exc, GatewayError):
        body = error_body(code=exc.code, message=exc.message, type_=exc.type, request_id=rid, fields=exc.fields)
        return Response(body, status=exc.status, headers={"X-Request-Id": rid})
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        exc.status_code = status.HTTP_401_UNAUTHORIZED
    if not isinstance(exc, exceptions.APIException):
        return None
    code, type_ = DRF_CODES.get(exc.status_code, ("error", "api_error"))
    fields = _flatten_fields(exc.detail) if isinstance(exc, exceptions.ValidationError) else None
    message = "invalid fields" if fields else (str(exc.detail) if not isinstance(exc.detail, list | dict) else code)
    body = error_body(code=code, message=message, type_=type_, request_id=rid, fields=fields)
    headers = {"X-Request-Id": rid}
    wait = getattr(exc, "wait", None)
    if wait:
        headers["Retry-After"] = str(int(wait))
    return Response(body, status=exc.status_code, headers=headers)

"""The admin API client and helpers every back-office test uses."""

import json

import pytest
from django.test import Client

from allocations.models import AuditEvent
from allocations.services import admin_token_create


@pytest.fixture
def token(staff):
    return admin_token_create(user=staff)


@pytest.fixture
def api(token):
    """A JSON client authenticated with an admin bearer token."""

    class Api:
        def __init__(self):
            self.client = Client()

        def _call(self, method, path, body=None, **extra):
            headers = {"HTTP_AUTHORIZATION": f"Bearer {token}", **extra}
            kwargs = {"content_type": "application/json"} if body is not None else {}
            data = json.dumps(body) if body is not None else None
            return getattr(self.client, method)(f"/api/admin/{path}", data, **kwargs, **headers)

        def get(self, path, params=None, **extra):
            return self.client.get(f"/api/admin/{path}", params or {}, HTTP_AUTHORIZATION=f"Bearer {token}", **extra)

        def post(self, path, body=None, **extra):
            return self._call("post", path, body if body is not None else {}, **extra)

        def patch(self, path, body, **extra):
            return self._call("patch", path, body, **extra)

    return Api()


def changes():
    """Audit events other than the token the `api` fixture made."""
    return AuditEvent.objects.exclude(action="admin_token_created")


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert {"code", "message", "type", "param", "request_id"} <= set(body["error"])
    return body["error"]

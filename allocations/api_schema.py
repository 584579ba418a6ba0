"""How the JSON APIs describe themselves in OpenAPI 3 (drf-spectacular, `/api/schema/`).

Operation ids are built from the whole path, parameters included, so a list and its detail
never collide; the admin bearer token is declared as an HTTP bearer scheme.
"""

import re

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema


class GatewayAutoSchema(AutoSchema):
    def get_operation_id(self):
        path = self.path.removeprefix("/api/").strip("/")
        words = [f"by_{part[1:-1]}" if part.startswith("{") else part for part in path.split("/")]
        return re.sub(r"\W+", "_", "_".join([*words, self.method.lower()]))


class AdminTokenScheme(OpenApiAuthenticationExtension):
    target_class = "allocations.api_auth.AdminTokenAuthentication"
    name = "adminToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "An admin token from `create_admin_token`."}

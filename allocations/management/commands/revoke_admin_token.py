"""`manage.py revoke_admin_token PREFIX_OR_ID`: revoke an admin API token (audited, actor "system")."""

import contextlib
import uuid
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db.models import Q

from allocations import services
from allocations.management.base import AuditedCommand
from allocations.models import AdminToken


class Command(AuditedCommand):
    help = "Revoke an admin API token by its 12-character prefix or its id."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("token", help="the token's prefix (as listed) or id")

    def handle(self, *args: Any, token: str, **options: Any) -> None:
        query = Q(prefix=token.strip())
        with contextlib.suppress(ValueError):
            query |= Q(pk=uuid.UUID(token.strip()))
        matches = list(AdminToken.objects.filter(query).select_related("user")[:2])
        if not matches:
            raise CommandError(f"no admin token with prefix or id {token!r}")
        if len(matches) > 1:
            raise CommandError(f"{token!r} matches more than one token; give its id")
        revoked = services.admin_token_revoke(token=matches[0])
        self.stdout.write(f"Revoked admin token {revoked.prefix}… of {revoked.user.username}.")

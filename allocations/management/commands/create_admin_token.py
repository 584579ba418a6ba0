"""`manage.py create_admin_token [--user NAME] [--expires-days N]`: a bearer token for the admin API.

Creates the staff user when missing. The token is stored hashed and printed once, alone on the
last line, so scripts can take it with `| tail -n 1`.
"""

from typing import Any

from django.core.management.base import CommandError, CommandParser

from allocations import services
from allocations.exceptions import GatewayError
from allocations.management.base import AuditedCommand
from allocations.models import Member


class Command(AuditedCommand):
    help = "Create an admin API token (creating the staff user if missing); prints the token on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", default="admin", help="staff username (default: admin)")
        parser.add_argument(
            "--expires-days", type=int, default=None, help="the token stops working after N days (default: never)"
        )

    def handle(self, *args: Any, user: str, expires_days: int | None = None, **options: Any) -> None:
        username = user.strip().casefold()
        if not username:
            raise CommandError("--user must not be empty")
        member = Member.objects.filter(username=username).first()
        if member is None:
            member = services.member_create(username=username, is_staff=True)
            self.stdout.write(f"Created staff user {member.username!r} (no password: token access only).")
        elif not member.is_staff:
            raise CommandError(f"user {username!r} exists but is not staff; refusing to give it an admin token")
        elif not member.is_active:
            raise CommandError(f"user {username!r} is disabled")
        try:
            token = services.admin_token_create(user=member, expires_days=expires_days)
        except GatewayError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"Admin API token for {member.username} (shown once; use it as Authorization: Bearer):")
        self.stdout.write(token)

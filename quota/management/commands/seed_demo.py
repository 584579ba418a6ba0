"""`manage.py seed_demo`: an idempotent demo on the built-in simulated provider.

Every write goes through the audited services. Running it again creates nothing twice; it sets new
passwords and rotates the demo key (only hashes are stored, so a fresh key is the only way to print
one that works) and says so.
"""

import datetime as dt
import secrets
from typing import Any, TypeAlias

from django.core.management.base import CommandParser
from django.db import transaction

from allocations import services
from allocations.management.base import AuditedCommand
from allocations.models import Allocation, ApiKey, CatalogModel, Member, ModelKind, Provider, ProviderKind
from quota.models import PriceVersion
from quota.services import price_version_add

PROVIDER_NAME = "simulated"
ADMIN_USERNAME = "admin"
DEMO_USERNAME = "demo"
DEMO_KEY_NAME = "demo (all models)"
PRICES_FROM = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
BASE_URL = "http://127.0.0.1:8000"  # what the report prints unless --base-url says where the demo serves

# slug, upstream name, kind, price row, (token quota, cost cap) of the demo allocation
ModelRow: TypeAlias = tuple[str, str, str, dict[str, Any], tuple[int | None, str | None]]
MODELS: list[ModelRow] = [
    (
        "sim/gpt-4o-mini",
        "gpt-4o-mini",
        ModelKind.CHAT,
        {"input_per_1m": "0.15", "cached_input_per_1m": "0.075", "output_per_1m": "0.60"},
        (1_000_000, "5.00"),
    ),
    (
        "sim/text-embedding-3-small",
        "text-embedding-3-small",
        ModelKind.EMBEDDING,
        {"input_per_1m": "0.02"},
        (None, None),
    ),
    ("sim/gpt-image-1", "gpt-image-1", ModelKind.IMAGE, {"unit": "image", "price_per_unit": "0.04"}, (None, "2.00")),
    ("sim/tts-1", "tts-1", ModelKind.TTS, {"unit": "character", "price_per_unit": "0.000015"}, (None, "1.00")),
    ("sim/whisper-1", "whisper-1", ModelKind.STT, {"unit": "minute", "price_per_unit": "0.006"}, (None, None)),
    ("sim/ocr-1", "ocr-1", ModelKind.OCR, {"unit": "page", "price_per_unit": "0.001"}, (None, None)),
    ("sim/rerank-1", "rerank-1", ModelKind.RERANK, {"unit": "query", "price_per_unit": "0.002"}, (None, None)),
    (
        "sim/omni-moderation-latest",
        "omni-moderation-latest",
        ModelKind.MODERATION,
        {"unit": "request", "price_per_unit": "0.0001"},
        (None, None),
    ),
    (
        "sim/gpt-4o-realtime-preview",
        "gpt-4o-realtime-preview",
        ModelKind.REALTIME,
        {
            "input_per_1m": "5.00",
            "cached_input_per_1m": "2.50",
            "output_per_1m": "20.00",
            "audio_input_per_1m": "40.00",
            "audio_output_per_1m": "80.00",
        },
        (2_000_000, "10.00"),
    ),
]


class Command(AuditedCommand):
    help = (
        "Seed (idempotently) a demo: admin login, member 'demo', the simulated provider, models, prices, allocations."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--base-url", default=BASE_URL, help="where the demo is served (printed in the report)")

    def handle(self, *args: Any, **options: Any) -> None:
        self.base_url = options.get("base_url") or BASE_URL
        with transaction.atomic():
            admin_password, demo_password = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
            admin = self._member(ADMIN_USERNAME, admin_password, superuser=True)
            demo = self._member(DEMO_USERNAME, demo_password, superuser=False)
            provider = self._provider()
            allocations = [self._allocation(demo, self._model(provider, row), row) for row in MODELS]
            plaintext, rotated = self._demo_key(demo, allocations)
        self._report(admin, admin_password, demo, demo_password, plaintext, rotated)

    def _member(self, username: str, password: str, *, superuser: bool) -> Member:
        member = Member.objects.filter(username=username).first()
        if member is None:
            member = services.member_create(
                username=username,
                email=f"{username}@example.org",
                password=password,
                is_staff=superuser,
                is_superuser=superuser,
            )
            self.stdout.write(f"created {'staff login' if superuser else 'member'} {username}")
            return member
        if superuser:
            services.member_set_roles(member=member, is_staff=True, is_superuser=True)
        if not member.is_active:
            services.member_set_active(member=member, is_active=True)
        services.member_set_password(member=member, password=password)
        return member

    def _provider(self) -> Provider:
        provider = Provider.objects.filter(name=PROVIDER_NAME).first()
        if provider is None:
            provider = services.provider_create(name=PROVIDER_NAME, kind=ProviderKind.SIMULATED)
            self.stdout.write("created the simulated provider (built-in, no network)")
        return provider

    def _model(self, provider: Provider, row: ModelRow) -> CatalogModel:
        slug, upstream, kind, price, _caps = row
        model = CatalogModel.objects.filter(slug=slug).first()
        if model is None:
            label = f"{upstream} (simulated)"
            model = services.model_create(
                slug=slug, provider=provider, upstream_name=upstream, kind=kind, display_name=label
            )
            self.stdout.write(f"created model {slug} ({kind})")
        if not PriceVersion.objects.filter(model=model).exists():
            price_version_add(model=model, effective_from=PRICES_FROM, **price)
        return model

    def _allocation(self, member: Member, model: CatalogModel, row: ModelRow) -> Allocation:
        tokens, cost = row[4]
        allocation = (
            Allocation.objects.filter(member=member, model=model).exclude(status=Allocation.Status.REVOKED).first()
        )
        if allocation is None:
            allocation, _key, _plaintext = services.allocation_create(
                member=member, model=model, quota_tokens_per_month=tokens, quota_cost_usd_per_month=cost
            )
        return allocation

    def _demo_key(self, member: Member, allocations: list[Allocation]) -> tuple[str, bool]:
        """Returns (plaintext, rotated). Only hashes are stored, so a second run rotates the key."""
        key = ApiKey.objects.live().filter(member=member, name=DEMO_KEY_NAME).first()
        if key is not None:
            if set(key.scopes.values_list("allocation_id", flat=True)) == {a.pk for a in allocations}:
                _key, plaintext = services.api_key_rotate(key=key)
                return plaintext, True
            services.api_key_revoke(key=key)
        _key, plaintext = services.api_key_create(member=member, name=DEMO_KEY_NAME, allocations=allocations)
        return plaintext, key is not None

    def _report(
        self, admin: Member, admin_password: str, demo: Member, demo_password: str, plaintext: str, rotated: bool
    ) -> None:
        w = self.stdout.write
        w("")
        w("Demo ready. Provider: simulated (built-in, deterministic, no network).")
        w(f"  Admin:   {self.base_url}/admin/   login {admin.username} / {admin_password}")
        w(f"  Portal:  {self.base_url}/portal/  login {demo.username} / {demo_password}")
        w("  (passwords are set anew on every run of seed_demo)")
        w(f"  API base URL: {self.base_url}/v1")
        if rotated:
            w("  The demo key was rotated: the key printed by the previous run no longer works.")
        w(f"  Demo API key (all demo models): {plaintext}")

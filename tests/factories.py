"""factory_boy factories for the governance model. Writes that must audit go through services
in tests that check auditing; factories are for arranging a world quickly."""

import datetime as dt
import uuid
from decimal import Decimal

import factory

from allocations.models import (
    Allocation,
    AuditEvent,
    CatalogModel,
    Deployment,
    Member,
    ModelKind,
    Provider,
    ProviderKind,
)
from allocations.services import api_key_create
from quota.models import CallRecord, PriceVersion


class MemberFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Member
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"member{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.org")
    password = factory.django.Password("pw-for-tests-1")


class ProviderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Provider

    name = factory.Sequence(lambda n: f"provider{n}")
    kind = ProviderKind.SIMULATED
    base_url = ""


class CatalogModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CatalogModel
        skip_postgeneration_save = True

    provider = factory.SubFactory(ProviderFactory)
    slug = factory.Sequence(lambda n: f"sim/model-{n}")
    upstream_name = factory.LazyAttribute(lambda o: o.slug.rsplit("/", 1)[-1])
    kind = ModelKind.CHAT
    display_name = factory.LazyAttribute(lambda o: o.slug)
    first_deployment = factory.RelatedFactory(
        "tests.factories.DeploymentFactory",
        factory_related_name="model",
        provider=factory.SelfAttribute("..provider"),
        upstream_name=factory.SelfAttribute("..upstream_name"),
    )


class DeploymentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Deployment

    model = factory.SubFactory(CatalogModelFactory, first_deployment=None)
    provider = factory.SubFactory(ProviderFactory)
    upstream_name = "upstream-model"


class AllocationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Allocation

    member = factory.SubFactory(MemberFactory)
    model = factory.SubFactory(CatalogModelFactory)
    display_name = factory.LazyAttribute(lambda o: o.model.slug)


class PriceVersionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = PriceVersion

    model = factory.SubFactory(CatalogModelFactory)
    effective_from = factory.LazyFunction(lambda: dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    input_per_1m = Decimal("1.00")
    output_per_1m = Decimal("2.00")


def make_key(*, member, allocations, name="test key"):
    """Returns (ApiKey, plaintext) through the real service."""
    return api_key_create(member=member, name=name, allocations=allocations)


SIGN_IN_ACTIONS = ("login_succeeded", "login_failed", "logged_out")


def audit_actions() -> list[str]:
    """The governance audit events' actions, oldest first (the sign-ins a test makes left out)."""
    return list(AuditEvent.objects.exclude(action__in=SIGN_IN_ACTIONS).order_by("id").values_list("action", flat=True))


def roll_up_records() -> None:
    """The daily and hourly rollups of the call records a test wrote directly, as records it wants
    reports to read (the ledger writes a record and its rollups together)."""
    from quota.rollups import hourly_rollups_rebuild, record_days, rollups_rebuild

    days = record_days()
    if days is not None:
        rollups_rebuild(first_day=days[0], last_day=days[1])
        hourly_rollups_rebuild(start=CallRecord.objects.earliest("started_at").started_at)


def call_record(allocation, when: dt.datetime, **fields) -> CallRecord:
    """A successful chat call's record written directly, without its rollups (roll_up_records)."""
    return CallRecord.objects.create(
        request_id=str(uuid.uuid4()),
        allocation=allocation,
        member=allocation.member,
        model=allocation.model,
        endpoint="chat.completions",
        started_at=when,
        outcome="success",
        **{"input_tokens": 7, **fields},
    )

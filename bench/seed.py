#!/usr/bin/env python3
"""Seeds the benchmark world: a member with priced, capped allocations (caps and reservations on,
never reached) whose models point at the fake upstreams, and one key scoped to all of them.
`bench0lim` is `bench0` with rate limits on its allocation and its model too (rpm, tpm and
max_parallel, never reached), for the limiter's cost per call. A second member, `benchgrp`, holds
an allocation of `bench0` as `bench` does and is in a group with a monthly budget (a cost and a
token cap, checked and reserved on every call, never reached), for a group budget's cost per call.
`benchreal` points at the third upstream when one is given (run.py's realistic streams).
Prints `group-key: <benchgrp's key>`, then the key (last line).
Usage: DATABASE_URL=... seed.py UPSTREAM0_URL UPSTREAM50_URL [UPSTREAM_REAL_URL]"""

import os
import sys
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")

import django  # noqa: E402
from django.utils import timezone  # noqa: E402

django.setup()

from allocations.groups import group_create, group_members_change  # noqa: E402
from allocations.models import ApiKey, CatalogModel, Group, Member, Provider  # noqa: E402
from allocations.services import (  # noqa: E402
    allocation_create,
    allocation_update,
    api_key_create,
    member_create,
    model_create,
    model_update,
    provider_create,
)
from quota.services import price_version_add  # noqa: E402


def main(upstream0: str, upstream50: str, upstream_real: str | None = None) -> None:
    member = Member.objects.filter(username="bench").first() or member_create(username="bench")
    allocations = []
    upstreams = [("bench0", upstream0), ("bench50", upstream50), ("bench0lim", upstream0)]
    if upstream_real:
        upstreams.append(("benchreal", upstream_real))
    for name, url in upstreams:
        Provider.objects.filter(name=name).update(base_url=url + "/v1")
        provider = Provider.objects.filter(name=name).first() or provider_create(
            name=name, kind="openai", base_url=url + "/v1", api_key="sk-upstream-bench"
        )
        model = CatalogModel.objects.filter(slug=f"{name}/gpt-4o-mini").first()
        if model is None:
            slug = f"{name}/gpt-4o-mini"
            model = model_create(slug=slug, provider=provider, upstream_name="gpt-4o-mini", kind="chat")
            price_version_add(model=model, input_per_1m="0.15", cached_input_per_1m="0.075", output_per_1m="0.60")
        allocation = model.allocations.filter(member=member).first()
        if allocation is None:
            allocation, _, _ = allocation_create(
                member=member, model=model, quota_tokens_per_month=10**15, quota_cost_usd_per_month=Decimal("1e9")
            )
        if name.endswith("lim"):
            limits = {"rpm_limit": 10**9, "tpm_limit": 10**15, "max_parallel": 10**6}
            model_update(model=model, changes=limits)
            allocation_update(allocation=allocation, changes=limits)
        allocations.append(allocation)
    ApiKey.objects.filter(member=member, name="bench").update(revoked_at=timezone.now())
    _, plaintext = api_key_create(member=member, name="bench", allocations=allocations)
    print(f"group-key: {_grouped_member(allocations[0].model)}")
    print(plaintext)


def _grouped_member(model) -> str:
    """`benchgrp`: an allocation of `model` like bench's, its member in one capped group."""
    member = Member.objects.filter(username="benchgrp").first() or member_create(username="benchgrp")
    group = Group.objects.filter(slug="bench-group").first() or group_create(
        data={"name": "Bench group", "quota_cost_usd_per_month": "1e9", "quota_tokens_per_month": 10**15}
    )
    group_members_change(group=group, add=[member.username])
    allocation = model.allocations.filter(member=member).first()
    if allocation is None:
        allocation, _, _ = allocation_create(
            member=member, model=model, quota_tokens_per_month=10**15, quota_cost_usd_per_month=Decimal("1e9")
        )
    ApiKey.objects.filter(member=member, name="bench").update(revoked_at=timezone.now())
    return api_key_create(member=member, name="bench", allocations=[allocation])[1]


if __name__ == "__main__":
    main(*sys.argv[1:4])

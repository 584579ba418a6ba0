"""The routing order of a model's deployments (quota.routing): priority, weight, weight 0 last."""

import asyncio
import random
from collections import Counter

from allocations.access import DeploymentInfo, ProviderInfo
from quota import routing

PROVIDER = ProviderInfo(id="p", kind="openai", base_url="http://x", api_version="", api_key="k", is_active=True)


def deployment(name: str, *, weight: int = 1, priority: int = 0) -> DeploymentInfo:
    return DeploymentInfo(id=name, provider=PROVIDER, upstream_name=name, weight=weight, priority=priority)


def test_two_thousand_picks_follow_the_weights_within_five_percent():
    a, b, c = deployment("a", weight=1), deployment("b", weight=3), deployment("c", weight=6)
    rng = random.Random(27)
    firsts = Counter(routing.weighted_order([a, b, c], rng=rng)[0].id for _ in range(2000))
    for name, share in (("a", 0.1), ("b", 0.3), ("c", 0.6)):
        assert abs(firsts[name] / 2000 - share) <= 0.05 * share + 0.01, firsts


def test_the_best_priority_comes_first_and_weight_zero_only_after_every_weighted_one():
    backup = deployment("backup", weight=0, priority=0)
    main = deployment("main", priority=0)
    later = deployment("later", priority=1)
    for seed in range(50):
        order = routing.weighted_order([backup, later, main], rng=random.Random(seed))
        assert [d.id for d in order] == ["main", "later", "backup"]


def test_a_deployment_cooling_down_is_tried_last(monkeypatch):
    async def cooling(ids):
        return {"a"}

    monkeypatch.setattr(routing, "cooling_down", cooling)
    entry = type("Entry", (), {})()
    entry.deployments = (deployment("a", priority=0), deployment("b", priority=1))
    order = asyncio.run(routing.plan(entry))
    assert [d.id for d in order] == ["b", "a"]
    single = deployment("only")
    entry.deployments = (single,)
    assert asyncio.run(routing.plan(entry)) == [single]  # one deployment: nothing read


def test_the_cooldown_honours_retry_after_within_an_hour(settings):
    settings.GATEWAY_COOLDOWN_S = 30
    assert routing.cooldown_seconds(None) == 30
    assert routing.cooldown_seconds("7") == 7
    assert routing.cooldown_seconds("99999") == 3600
    assert routing.cooldown_seconds("soon") == 30
    assert routing.cooldown_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 1  # a date past: at least a second

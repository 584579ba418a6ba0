"""Routing state shared by server processes (`gateway_project.serve`, two of them, one worker
each): a cooldown set by one is honoured by the other, and a deployment's own rpm holds across both."""

import pytest

from allocations.deployments import deployment_create
from allocations.models import Deployment
from quota.models import CallRecord

from .conftest import chat

pytestmark = pytest.mark.django_db(transaction=True)


def arranged(world, first_upstream: str, **first_fields):
    allocation = world.allocation(upstream_name=first_upstream)
    first = Deployment.objects.get(model=allocation.model)
    Deployment.objects.filter(pk=first.pk).update(**first_fields)
    backup = deployment_create(
        model=allocation.model, provider=world.provider(), upstream_name="gpt-4o", priority=1
    )  # its commit bumps the auth generation: both processes load the rows above
    return allocation, first, backup


def test_a_cooldown_set_by_one_process_is_honoured_by_the_other(serve_factory, arrange, fake):
    """The cooldown is a key in the shared Redis database. A process that shares the database and
    flushes it (another run's test start), or a read of it past its deadline on a starved machine
    (the gateway then fails open: no cooldown known), can make one attempt miss it; a process
    that does not share cooldowns misses it every time. So up to three attempts, each on
    deployments of its own (their own cooldown keys)."""
    one, two = serve_factory(1), serve_factory(1)
    world = arrange(one)

    def attempt() -> bool:
        allocation, first, backup = arranged(world, "fake-error-429")
        fake.requests.clear()
        assert chat(one.url, allocation.plaintext, allocation.model.slug).status_code == 200
        assert [r["body"]["model"] for r in fake.requests] == ["fake-error-429", "gpt-4o"]
        fake.requests.clear()
        assert chat(two.url, allocation.plaintext, allocation.model.slug).status_code == 200
        if [r["body"]["model"] for r in fake.requests] != ["gpt-4o"]:  # the other process skips it
            return False
        rows = list(CallRecord.objects.filter(allocation=allocation).order_by("id"))
        assert [(r.attempts, r.deployment_id) for r in rows] == [(2, backup.pk), (1, backup.pk)]
        return True

    assert any(attempt() for _ in range(3))


def test_a_deployments_rpm_holds_across_processes(serve_factory, arrange, fake):
    one, two = serve_factory(1), serve_factory(1)
    allocation, first, backup = arranged(arrange(one), "gpt-4o-mini", rpm_limit=2)
    for server in (one, two, one, two):
        assert chat(server.url, allocation.plaintext, allocation.model.slug).status_code == 200
    served = [r["body"]["model"] for r in fake.requests]
    assert served == ["gpt-4o-mini", "gpt-4o-mini", "gpt-4o", "gpt-4o"]
    rows = CallRecord.objects.filter(allocation=allocation).order_by("id")
    assert [r.deployment_id for r in rows] == [first.pk, first.pk, backup.pk, backup.pk]

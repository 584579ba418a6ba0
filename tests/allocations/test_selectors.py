import datetime as dt

from django.utils import timezone

from allocations.models import ApiKey
from allocations.selectors import key_prefixes_by_allocation
from allocations.services import api_key_revoke
from tests.factories import AllocationFactory, make_key


def test_key_prefixes_are_the_live_keys_of_each_allocation_oldest_first(member):
    first, second, keyless = (AllocationFactory(member=member) for _ in range(3))
    newer, _ = make_key(member=member, allocations=[first, second], name="newer")
    older, _ = make_key(member=member, allocations=[first], name="older")
    revoked, _ = make_key(member=member, allocations=[first], name="revoked")
    ApiKey.objects.filter(pk=older.pk).update(created_at=timezone.now() - dt.timedelta(days=1))
    api_key_revoke(key=revoked)

    prefixes = key_prefixes_by_allocation([first.pk, second.pk, keyless.pk])

    assert prefixes == {first.pk: [older.prefix, newer.prefix], second.pk: [newer.prefix], keyless.pk: []}

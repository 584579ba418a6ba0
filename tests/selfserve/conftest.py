import pytest
from django.core.cache import cache

from tests.backoffice.conftest import api, token  # noqa: F401  (the admin API client)
from tests.portal.conftest import (  # noqa: F401  (fixtures shared with the portal's tests)
    _fast_password_hashing,
    alice,
    alice_alloc,
    alice_client,
    alice_csrf_client,
    bob,
    bob_alloc,
    bob_client,
)
from tests.serving.conftest import fake, serve_factory  # noqa: F401  (the served gateway)


@pytest.fixture(autouse=True)
def _fresh_counters():
    """Rate-limit counters live in the shared cache: each test starts from zero."""
    cache.clear()
    yield
    cache.clear()

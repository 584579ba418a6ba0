import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
from django.conf import settings
from django.db import connection

from allocations.models import ModelKind, ProviderKind
from allocations.services import allocation_create, model_create, provider_create
from quota.models import CallRecord, Reservation, UsageCounter
from tests.conftest import free_port
from tests.factories import MemberFactory, PriceVersionFactory

from .asgi_server import start_asgi_server
from .fake_upstream import UPSTREAM_KEY, start_fake_upstream

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def fake_upstream():
    fake, stop = start_fake_upstream()
    yield fake
    stop()


@pytest.fixture(scope="session")
def gateway_url(django_db_setup, django_db_blocker):
    """The real ASGI application on a loopback port, in this process (so on the test database)."""
    from gateway_project.asgi import application
    from proxy.handler import loop_resources_close
    from quota.ledger import threads

    url, stop = start_asgi_server(application)
    yield url
    stop(before=loop_resources_close)
    with django_db_blocker.unblock():
        threads.pool_close_connections()


@pytest.fixture
def gateway(gateway_url, transactional_db, fake_upstream):
    fake_upstream.requests.clear()
    return gateway_url


class World:
    """Arranges providers, models and allocations through the real services."""

    def __init__(self, gateway_url, upstream_url):
        self.gateway_url = gateway_url
        self.upstream_url = upstream_url
        self.member = MemberFactory(username="caller")
        self._n = 0

    def provider(self, kind=ProviderKind.OPENAI, api_version="", base_url=None):
        self._n += 1
        if base_url is None:
            base_url = self.upstream_url + ("/v1" if kind == ProviderKind.OPENAI else "")
        return provider_create(
            name=f"p{self._n}", kind=kind, base_url=base_url, api_key=UPSTREAM_KEY, api_version=api_version
        )

    def allocation(
        self,
        upstream_name="gpt-4o-mini",
        *,
        slug=None,
        kind=ModelKind.CHAT,
        provider=None,
        priced=True,
        tokens=None,
        cost=None,
        member=None,
        limits=None,
        model=None,
    ):
        self._n += 1
        model = model or model_create(
            slug=slug or f"up{self._n}/{upstream_name}",
            provider=provider or self.provider(),
            upstream_name=upstream_name,
            kind=kind,
        )
        if priced and not model.prices.exists():
            PriceVersionFactory(
                model=model,
                input_per_1m=Decimal("1.00"),
                cached_input_per_1m=Decimal("0.50"),
                output_per_1m=Decimal("2.00"),
            )
        allocation, key, plaintext = allocation_create(
            member=member or self.member,
            model=model,
            quota_tokens_per_month=tokens,
            quota_cost_usd_per_month=cost,
            limits=limits,
        )
        allocation.plaintext = plaintext
        allocation.key = key
        return allocation

    def client(self, key, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway_url + "/v1", api_key=key, max_retries=0, **kwargs)


def start_gateway_processes(count: int, **extra_env: str):
    """`count` daphne processes on the test database (committed data: tests use transactional_db).
    Returns (their base URLs, a function that stops them)."""
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": settings.CACHES["default"].get("LOCATION", ""),
        "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
        **extra_env,
    }
    procs, urls = [], []
    for _ in range(count):
        port = free_port()
        command = [sys.executable, "-m", "gateway_project.worker", "-b", "127.0.0.1", "-p", str(port)]
        procs.append(
            subprocess.Popen(
                [*command, "gateway_project.asgi:application"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        urls.append(f"http://127.0.0.1:{port}")

    def stop():
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)

    deadline = time.monotonic() + 60
    try:
        for base in urls:
            while True:
                try:
                    httpx.get(base + "/v1/models", timeout=1)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "gateway process did not start"
                    time.sleep(0.2)
    except BaseException:
        stop()
        raise
    return urls, stop


@pytest.fixture
def two_gateway_processes(gateway):
    urls, stop = start_gateway_processes(2)
    yield urls
    stop()


@pytest.fixture
def world(gateway, fake_upstream):
    return World(gateway, fake_upstream.url)


def record_of(request_id: str, timeout: float = 10.0) -> CallRecord:
    """The call's record. A stream its client left settles after the client has gone, so wait a bounded moment."""
    deadline = time.monotonic() + timeout
    while True:
        row = CallRecord.objects.filter(request_id=request_id).first()
        if row is not None or time.monotonic() > deadline:
            assert row is not None, f"no call record for {request_id}"
            return row
        time.sleep(0.02)


def counter_of(allocation) -> UsageCounter | None:
    return UsageCounter.objects.filter(allocation=allocation).first()


CHAT_MESSAGES = [{"role": "user", "content": "Say hello"}]


def chat_call(world, allocation, rid: str):
    return world.client(allocation.plaintext).chat.completions.create(
        model=allocation.model.slug, messages=CHAT_MESSAGES, extra_headers={"X-Request-Id": rid}
    )


@pytest.fixture
def thread_steps(monkeypatch):
    """The names of the accounting steps that ran on a thread (quota.ledger.threads.run)."""
    from quota.ledger import threads

    steps: list[str] = []
    original = threads.run

    async def counting(fn, **kwargs):
        steps.append(fn.__name__)
        return await original(fn, **kwargs)

    monkeypatch.setattr(threads, "run", counting)
    return steps


def assert_settled_once(allocation, rid: str) -> CallRecord:
    """The call's one record, and the allocation's counters equal to its successful records."""
    record = record_of(rid)
    assert CallRecord.objects.filter(request_id=rid).count() == 1
    counter = counter_of(allocation)
    records = CallRecord.objects.filter(allocation=allocation, outcome="success")
    assert counter.tokens_used == sum(r.input_tokens + r.output_tokens for r in records)
    assert counter.cost_used == sum(r.cost_usd for r in records)
    assert (counter.tokens_reserved, counter.cost_reserved) == (0, 0)
    assert not Reservation.objects.exists()
    return record


@pytest.fixture(scope="module")
def served(django_db_setup, django_db_blocker, fake_upstream, request):
    """`python -m gateway_project.serve --workers 1` on the test database, for the whole module,
    with the module's SERVE_ENV: for the tests that speak about the wire (the server's own
    reading, writing and disconnects), which the in-process bridge would not show."""
    from tests.serving.conftest import start_serve, stop_serve

    server = start_serve(1, **getattr(request.module, "SERVE_ENV", {}))
    yield server
    stop_serve(server)


@pytest.fixture
def served_world(served, transactional_db, fake_upstream):
    fake_upstream.requests.clear()
    return World(served.url, fake_upstream.url)

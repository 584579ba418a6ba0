"""Fixtures of the realtime tests: a fake realtime upstream, a priced realtime model behind it, and
the gateway served by a real daphne process on a free port."""

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from django.db import connection

from allocations.models import Allocation, Member, ModelKind
from allocations.services import model_create, provider_create
from quota.ledger import loop as aio
from quota.models import CallRecord, PriceVersion
from tests.factories import AllocationFactory, make_key

from .fake_upstream import FakeRealtimeUpstream

ROOT = Path(__file__).resolve().parents[2]
PROVIDER_KEY = "sk-provider-secret-never-shown"
# Token prices per 1M: the fake's USAGE (text in 40, cached 20, audio in 40, text out 20, audio out 30)
# costs 40*4 + 20*0.4 + 40*32 + 20*16 + 30*64 = 3688 per 1M = $0.003688 per response.
TOKEN_PRICE = {
    "input_per_1m": Decimal("4"),
    "cached_input_per_1m": Decimal("0.4"),
    "output_per_1m": Decimal("16"),
    "audio_input_per_1m": Decimal("32"),
    "audio_output_per_1m": Decimal("64"),
}
TURN_COST = Decimal("0.003688")


@pytest.fixture(autouse=True)
async def loop_connections_closed():
    """The test's event loop's database connections (the watch's generation reads, the gate's
    counter reads) closed with it, not left open until the test database is dropped."""
    yield
    await aio.pool_close()


@pytest.fixture
def fake_upstream():
    server = FakeRealtimeUpstream().start()
    yield server
    server.stop()


@dataclass
class RealtimeWorld:
    allocation: Allocation
    key: str
    slug: str


_counter = iter(range(1, 1_000_000))


def realtime_world(
    fake: FakeRealtimeUpstream | None,
    *,
    upstream_name: str = "gpt-rt",
    provider_kind: str = "openai",
    api_version: str = "",
    base_url: str | None = None,
    price: dict | None = None,
    kind: str = ModelKind.REALTIME,
    cost_cap: Decimal | None = None,
    token_cap: int | None = None,
    member=None,
) -> RealtimeWorld:
    n = next(_counter)
    if base_url is None and fake is not None:
        base_url = fake.azure_url if provider_kind == "azure" else fake.base_url
    provider = provider_create(
        name=f"rt-provider-{n}-{os.getpid()}",
        kind=provider_kind,
        base_url=base_url or "",
        api_key=PROVIDER_KEY if provider_kind != "simulated" else "",
        api_version=api_version,
    )
    slug = f"rt{os.getpid()}-{n}/{upstream_name}-{n}"
    model = model_create(slug=slug, provider=provider, upstream_name=upstream_name, kind=kind)
    if price is not None:
        PriceVersion.objects.create(model=model, effective_from="2020-01-01T00:00:00Z", **price)
    # No password: hashing one costs a second per test and nothing here logs in.
    member = member or Member.objects.create(username=f"rt-member-{n}-{os.getpid()}")
    allocation = AllocationFactory(
        member=member, model=model, quota_cost_usd_per_month=cost_cap, quota_tokens_per_month=token_cap
    )
    _, plaintext = make_key(member=member, allocations=[allocation])
    return RealtimeWorld(allocation=allocation, key=plaintext, slug=slug)


async def session_records(allocation, *, count: int = 1, timeout: float = 10.0) -> list[CallRecord]:
    """The allocation's realtime call records, once `count` of them exist (settlement may trail the
    client's own close by a moment when the client is the one closing)."""

    def fetch():
        return list(CallRecord.objects.filter(allocation=allocation, endpoint="realtime").order_by("id"))

    deadline = time.monotonic() + timeout
    while True:
        rows = await database_sync_to_async(fetch)()
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.05)


# --- daphne -----------------------------------------------------------------------------------


@dataclass
class Daphne:
    process: subprocess.Popen
    port: int
    log_path: Path  # daphne's output, for failure reports

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"


def start_daphne(db_name: str, env: dict | None = None) -> Daphne:
    """daphne on a free port (port 0; the bound port is read from its log, kept in a file), with
    this process's environment or `env`."""
    env = dict(os.environ if env is None else env)
    env["DATABASE_URL"] = re.sub(r"/[^/]*$", f"/{db_name}", env.get("DATABASE_URL", ""))
    env.setdefault("DJANGO_SETTINGS_MODULE", "gateway_project.settings")
    env["PYTHONUNBUFFERED"] = "1"
    log = Path(tempfile.mkstemp(prefix="daphne-", suffix=".log")[1])
    with log.open("w") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway_project.worker",
                "-e",
                "tcp:port=0:interface=127.0.0.1",
                "gateway_project.asgi:application",
            ],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while not (found := re.search(r"Listening on TCP address [\d.]+:(\d+)", log.read_text())):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"daphne did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return Daphne(process=process, port=int(found.group(1)), log_path=log)


def stop_daphne(server: Daphne, sig=signal.SIGTERM) -> int:
    with contextlib.suppress(ProcessLookupError):
        server.process.send_signal(sig)
    try:
        return server.process.wait(20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        return server.process.wait(5)


@pytest.fixture(scope="session")
def daphne_server(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        db_name = connection.settings_dict["NAME"]
    server = start_daphne(db_name)
    yield server
    stop_daphne(server)


@pytest.fixture
def own_daphne(django_db_setup, django_db_blocker):
    """A daphne of the test's own, for tests that stop or kill it."""
    with django_db_blocker.unblock():
        db_name = connection.settings_dict["NAME"]
    server = start_daphne(db_name)
    yield server
    if server.process.poll() is None:
        stop_daphne(server, signal.SIGKILL)

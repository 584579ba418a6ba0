"""The fault suite's rig: the processes (processes.py) around the pytest test database, and the
world the load calls (one key, one priced allocation per upstream model, one of them capped; the
member in a group with a budget, so every call also reserves on and settles into a group)."""

import contextlib
import json
import tempfile
import threading
import urllib.request
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from django.db import connection

from allocations.groups import group_create, group_members_change
from allocations.models import Allocation, Group, ModelKind, ProviderKind
from allocations.services import allocation_create, api_key_create, model_create, provider_create
from tests.factories import MemberFactory, PriceVersionFactory

from . import processes
from .faults import Faults
from .load import KINDS

UPSTREAM_TIMEOUT_S = 2.0
CAP = Decimal("0.004")  # the capped allocation's monthly cost cap: reached within a run
# The member's group budget: held and settled on every call, never reached (it would stop the load).
GROUP_CAP = {"quota_cost_usd_per_month": "1000", "quota_tokens_per_month": 10**12}


@dataclass
class Rig:
    upstream: processes.Service
    redis: processes.Service
    forwarder: processes.Service
    gateways: list[processes.Service]
    faults: Faults
    key: str = ""
    capped: Allocation | None = None
    group: Group | None = None
    services: list = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def upstream_calls(self) -> list[dict]:
        """The upstream's ledger: every call it received, by request id."""
        url = f"http://127.0.0.1:{self.upstream.port}/_chaos/calls"
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 (a loopback URL we built)
            return json.load(answer)

    def seed(self) -> None:
        """One member, one key scoped to one allocation per upstream model, priced."""
        member = MemberFactory(username="chaos")
        base_url = f"http://127.0.0.1:{self.upstream.port}/v1"
        provider = provider_create(name="chaos", kind=ProviderKind.OPENAI, base_url=base_url, api_key="sk-up")
        allocations = []
        for slug in sorted({spec[0] for spec in KINDS.values()}):
            upstream_name = slug.split("/", 1)[1]
            model = model_create(slug=slug, provider=provider, upstream_name=upstream_name, kind=ModelKind.CHAT)
            PriceVersionFactory(model=model, input_per_1m=Decimal("1.00"), output_per_1m=Decimal("2.00"))
            cap = CAP if upstream_name == "chaos-capped" else None
            allocation, _, _ = allocation_create(member=member, model=model, quota_cost_usd_per_month=cap)
            allocations.append(allocation)
            self.capped = allocation if cap is not None else self.capped
        _, self.key = api_key_create(member=member, name="chaos", allocations=allocations)
        self.group = group_create(data={"name": "Chaos", **GROUP_CAP})
        group_members_change(group=self.group, add=[member.username])


def _start_all(services) -> None:
    threads = [threading.Thread(target=s.start) for s in services]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for service in services:
        if not service.alive:
            raise RuntimeError(f"{service.name} did not start:\n{service.log.read_text()[-3000:]}")


@contextlib.contextmanager
def rig_of(*, gateways: int, outage_s: float):
    """The processes, started here and all gone when the block ends. Their logs go to a directory
    of the rig's own (pytest's tmp_path may be pruned by another pytest run meanwhile, and a
    restarted process reopens its log)."""
    with tempfile.TemporaryDirectory(prefix="chaos-") as logs:
        yield from _rig(Path(logs), gateways=gateways, outage_s=outage_s)


def _rig(logs: Path, *, gateways: int, outage_s: float):
    db = connection.settings_dict
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        own_pid = cursor.fetchone()[0]
    host, port = db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)
    redis, upstream = processes.redis_server(logs=logs), processes.upstream(latency_ms=80, logs=logs)
    forwarder = processes.pg_forwarder(target_host=host, target_port=port, logs=logs)
    env = processes.gateway_env(
        database_url=processes.database_url_via(forwarder.port, db["NAME"]),
        redis_url=f"redis://127.0.0.1:{redis.port}/0",
        upstream_timeout_s=UPSTREAM_TIMEOUT_S,
    )
    servers = [processes.gateway(port=processes.free_port(), env=env, logs=logs) for _ in range(gateways)]
    admin_dsn = f"host={host} port={port} user={db['USER']} dbname=postgres"
    faults = Faults(servers, redis, forwarder, admin_dsn, db["NAME"], own_pid, outage_s)
    rig = Rig(upstream, redis, forwarder, servers, faults, services=[redis, upstream, forwarder, *servers])
    try:
        _start_all([redis, upstream, forwarder])
        _start_all(servers)
        yield rig
    finally:
        processes.stop_all(rig.services)

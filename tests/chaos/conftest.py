"""The fault suite's rig: the processes (processes.py) around the pytest test database, and the
world the load calls (one key, one priced allocation per upstream model, one of them capped; the
member in a group with a budget, so every call also reserves on and settles into a group).
With `deployments=2` the model the load calls most (`chaos/chaos-ok`) has a second deployment: a
second provider account whose base URL is a second upstream process of its own."""

import contextlib
import json
import tempfile
import threading
import urllib.request
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from django.db import connection

from allocations.deployments import deployment_create
from allocations.groups import group_create, group_members_change
from allocations.models import Allocation, Deployment, Group, ModelKind, ProviderKind
from allocations.services import allocation_create, api_key_create, model_create, provider_create
from tests.factories import MemberFactory, PriceVersionFactory

from . import processes
from .faults import Faults
from .load import KINDS

UPSTREAM_TIMEOUT_S = 2.0
CAP = Decimal("0.004")  # the capped allocation's monthly cost cap: reached within a run
SHARED_MODEL = "chaos/chaos-ok"  # the model served by two deployments when the rig has two upstreams
# The member's group budget: held and settled on every call, never reached (it would stop the load).
GROUP_CAP = {"quota_cost_usd_per_month": "1000", "quota_tokens_per_month": 10**12}


@dataclass
class Rig:
    upstream: processes.Service
    redis: processes.Service
    forwarder: processes.Forwarder
    gateways: list[processes.Service]
    faults: Faults
    key: str = ""
    capped: Allocation | None = None
    group: Group | None = None
    services: list = field(default_factory=list)
    # The second upstream (the shared model's second deployment), and the deployment id behind
    # each upstream, in the order of `upstreams`.
    spare: processes.Service | None = None
    deployment_ids: list[str] = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    @property
    def upstreams(self) -> list[processes.Service]:
        return [self.upstream] + ([self.spare] if self.spare else [])

    def upstream_calls(self) -> list[dict]:
        """The upstreams' ledgers as one: every request id any of them received, with `n` the
        calls received for it in all, `served` the usage of the one that answered it whole, and
        `served_by` the indexes (in `upstreams`) of every upstream that did."""
        merged: dict[str, dict] = {}
        for index, upstream in enumerate(self.upstreams):
            url = f"http://127.0.0.1:{upstream.port}/_chaos/calls"
            with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 (a loopback URL we built)
                for call in json.load(answer):
                    entry = merged.setdefault(call["rid"], {**call, "n": 0, "served": None, "served_by": []})
                    entry["n"] += call["n"]
                    if call["served"] is not None:
                        entry["served"] = call["served"]
                        entry["served_by"].append(index)
        return list(merged.values())

    def seed(self) -> None:
        """One member, one key scoped to one allocation per upstream model, priced."""
        member = MemberFactory(username="chaos")
        base_url = f"http://127.0.0.1:{self.upstream.port}/v1"
        provider = provider_create(name="chaos", kind=ProviderKind.OPENAI, base_url=base_url, api_key="sk-up")
        allocations = []
        for slug in sorted({spec[0] for spec in KINDS.values()}):
            upstream_name = slug.split("/", 1)[1]
            model = model_create(slug=slug, provider=provider, upstream_name=upstream_name, kind=ModelKind.CHAT)
            if slug == SHARED_MODEL and self.spare is not None:
                self._second_deployment(model)
            PriceVersionFactory(model=model, input_per_1m=Decimal("1.00"), output_per_1m=Decimal("2.00"))
            cap = CAP if upstream_name == "chaos-capped" else None
            allocation, _, _ = allocation_create(member=member, model=model, quota_cost_usd_per_month=cap)
            allocations.append(allocation)
            self.capped = allocation if cap is not None else self.capped
        _, self.key = api_key_create(member=member, name="chaos", allocations=allocations)
        self.group = group_create(data={"name": "Chaos", **GROUP_CAP})
        group_members_change(group=self.group, add=[member.username])

    def _second_deployment(self, model) -> None:
        """The same upstream name on a second provider account (the spare upstream), same weight."""
        base_url = f"http://127.0.0.1:{self.spare.port}/v1"
        provider = provider_create(name="chaos-b", kind=ProviderKind.OPENAI, base_url=base_url, api_key="sk-up-b")
        first = Deployment.objects.filter(model=model).in_order().get()
        second = deployment_create(model=model, provider=provider, upstream_name=model.upstream_name, weight=1)
        self.deployment_ids = [str(first.pk), str(second.pk)]


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
def rig_of(*, gateways: int, outage_s: float, deployments: int = 1, cooldown_s: float | None = None):
    """The processes, started here and all gone when the block ends. Their logs go to a directory
    of the rig's own (pytest's tmp_path may be pruned by another pytest run meanwhile, and a
    restarted process reopens its log)."""
    with tempfile.TemporaryDirectory(prefix="chaos-") as logs:
        yield from _rig(
            Path(logs), gateways=gateways, outage_s=outage_s, deployments=deployments, cooldown_s=cooldown_s
        )


def _rig(logs: Path, *, gateways: int, outage_s: float, deployments: int, cooldown_s: float | None):
    db = connection.settings_dict
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        own_pid = cursor.fetchone()[0]
    host, port = db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)
    redis, upstream = processes.redis_server(logs=logs), processes.upstream(latency_ms=80, logs=logs)
    spare = processes.upstream(latency_ms=80, logs=logs, name="upstream-b") if deployments == 2 else None
    forwarder = processes.pg_forwarder(target_host=host, target_port=port, logs=logs)
    env = processes.gateway_env(
        database_url=processes.database_url_via(forwarder.port, db["NAME"]),
        redis_url=f"redis://127.0.0.1:{redis.port}/0",
        upstream_timeout_s=UPSTREAM_TIMEOUT_S,
    )
    if cooldown_s is not None:
        env["GATEWAY_COOLDOWN_S"] = str(cooldown_s)
    servers = [processes.gateway(port=processes.free_port(), env=env, logs=logs) for _ in range(gateways)]
    admin_dsn = f"host={host} port={port} user={db['USER']} dbname=postgres"
    faults = Faults(servers, redis, forwarder, admin_dsn, db["NAME"], own_pid, outage_s, upstream=upstream)
    neighbours = [redis, upstream, forwarder] + ([spare] if spare else [])
    rig = Rig(upstream, redis, forwarder, servers, faults, services=[*neighbours, *servers], spare=spare)
    try:
        _start_all(neighbours)
        _start_all(servers)
        yield rig
    finally:
        processes.stop_all(rig.services)

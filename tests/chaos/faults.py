"""The faults the suite injects, in a cycle, while the load runs. Each step names what it did and
when (seconds since the load started), for the report."""

import asyncio
import signal
import time
from dataclasses import dataclass, field

import psycopg

from .processes import Forwarder, Service


@dataclass
class Faults:
    gateways: list[Service]
    redis: Service
    pg_forwarder: Forwarder
    admin_dsn: str  # a direct connection (not through the forwarder) to terminate backends
    db_name: str
    spare_pid: int  # the test process's own backend: not terminated
    outage_s: float
    log: list[tuple[float, str]] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)
    upstream: Service | None = None  # the upstream behind the shared model's first deployment
    # (killed, restarted) monotonic times of each outage of that upstream
    upstream_outages: list[tuple[float, float]] = field(default_factory=list)

    def note(self, what: str) -> None:
        self.log.append((round(time.monotonic() - self.t0, 1), what))

    async def cycle(self, pause: float = 2.0) -> None:
        """Every fault once, with `pause` seconds of plain load between them."""
        steps = (
            self.kill_and_restart,
            self.terminate_backends,
            self.database_refuses,
            self.redis_down,
            self.sigterm_and_restart,
            self.terminate_backends,
        )
        for step in steps:
            await asyncio.sleep(pause)
            await step()

    async def kill_and_restart(self, which: int = 0) -> None:
        await self._stop_and_restart(self.gateways[which], signal.SIGKILL)

    async def sigterm_and_restart(self, which: int = 1) -> None:
        await self._stop_and_restart(self.gateways[which], signal.SIGTERM)

    async def _stop_and_restart(self, gateway: Service, sig: int) -> None:
        self.note(f"{signal.Signals(sig).name} gateway :{gateway.port}")
        code = await asyncio.to_thread(gateway.stop, sig)
        self.note(f"gateway :{gateway.port} exited ({code}); restarting")
        await asyncio.to_thread(gateway.start)
        self.note(f"gateway :{gateway.port} serving again")

    async def terminate_backends(self) -> None:
        terminated = await asyncio.to_thread(self._terminate)
        self.note(f"pg_terminate_backend: {terminated} gateway connections")

    def _terminate(self) -> int:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid() AND pid <> %s",
                [self.db_name, self.spare_pid],
            ).fetchall()
        return len(rows)

    async def database_refuses(self) -> None:
        await asyncio.to_thread(self.pg_forwarder.down)
        self.note(f"PostgreSQL refusing connections for {self.outage_s:g} s (open ones cut)")
        await asyncio.sleep(self.outage_s)
        await asyncio.to_thread(self.pg_forwarder.up)
        self.note("PostgreSQL accepting again")

    async def redis_down(self) -> None:
        await asyncio.to_thread(self.redis.stop, signal.SIGKILL)
        self.note(f"Redis stopped for {self.outage_s:g} s")
        await asyncio.sleep(self.outage_s)
        await asyncio.to_thread(self.redis.start)
        self.note("Redis started again")

    async def deployment_cycle(self, pause: float = 2.0) -> None:
        """One deployment's upstream killed for `outage_s` and started again, between plain load."""
        await asyncio.sleep(pause)
        await self.upstream_down()
        await asyncio.sleep(pause)

    async def upstream_down(self) -> None:
        if self.upstream is None:
            raise RuntimeError("the rig has no upstream to take down")
        killed = time.monotonic()
        await asyncio.to_thread(self.upstream.stop, signal.SIGKILL)
        self.note(f"upstream :{self.upstream.port} (first deployment) killed for {self.outage_s:g} s")
        await asyncio.sleep(self.outage_s)
        await asyncio.to_thread(self.upstream.start)
        self.upstream_outages.append((killed, time.monotonic()))
        self.note(f"upstream :{self.upstream.port} serving again")

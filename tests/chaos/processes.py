"""The processes of the fault suite, each on its own loopback port: the gateway (daphne through
`gateway_project.serve`), the upstream, a Redis server and the TCP forwarder in front of
PostgreSQL. Every process is started here and stopped by whoever started it (`stop_all`)."""

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{process.args} did not start listening on {port}:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)


@dataclass
class Service:
    """One process on a fixed port, restartable on that same port."""

    name: str
    command: list[str]
    port: int
    log: Path
    env: dict = field(default_factory=lambda: dict(os.environ))
    process: subprocess.Popen | None = None
    starts: int = 0

    def start(self) -> "Service":
        with self.log.open("a") as sink:
            # A session of its own: SIGKILL takes the whole process group (a supervisor and its
            # workers, as when a host or container is lost), and nothing is left behind.
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_listening(self.port, self.process, self.log)
        self.starts += 1
        return self

    def send(self, sig: int) -> None:
        """SIGKILL to the process group; any other signal to the process (a supervisor forwards it)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                if sig == signal.SIGKILL:
                    os.killpg(self.process.pid, sig)
                else:
                    self.process.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int | None:
        if self.process is None:
            return None
        self.send(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            return self.process.wait(10)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def gateway(*, port: int, env: dict, logs: Path) -> Service:
    command = [sys.executable, "-m", "gateway_project.serve", "-b", "127.0.0.1", "-p", str(port)]
    command.append("gateway_project.asgi:application")
    return Service("gateway", command, port, logs / f"gateway-{port}.log", env={**env, "PYTHONUNBUFFERED": "1"})


def upstream(*, latency_ms: int, logs: Path, name: str = "upstream") -> Service:
    """The upstream keeps its ledger in a file of the rig's, so it outlives a restart."""
    port = free_port()
    command = [sys.executable, "-m", "tests.chaos.upstream", "--port", str(port), "--latency-ms", str(latency_ms)]
    command += ["--ledger", str(logs / f"{name}-ledger.jsonl")]
    return Service(name, command, port, logs / f"{name}.log")


def redis_server(*, logs: Path) -> Service:
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return Service("redis", command, port, logs / "redis.log")


@dataclass
class Forwarder(Service):
    """The TCP forwarder in front of PostgreSQL (tests.chaos.tcp_proxy). It acts on its signals in
    its own time: `down` and `up` return once it has (its port refuses, or accepts, connections),
    so what a test does next meets the database as the test meant it to."""

    def down(self, timeout: float = 10) -> None:
        """The database unreachable: new connections refused, the open ones cut (in the same step
        as the refusal, tcp_proxy.Forwarder.down)."""
        self.send(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while _accepts(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the forwarder on {self.port} still accepts connections")
            time.sleep(0.01)

    def up(self) -> None:
        self.send(signal.SIGUSR2)
        assert self.process is not None
        wait_listening(self.port, self.process, self.log, timeout=10)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def pg_forwarder(*, target_host: str, target_port: int, logs: Path) -> Forwarder:
    port = free_port()
    command = [sys.executable, "-m", "tests.chaos.tcp_proxy", "--port", str(port)]
    command += ["--target-host", target_host, "--target-port", str(target_port)]
    return Forwarder("pg-forwarder", command, port, logs / "pg-forwarder.log")


def gateway_env(*, database_url: str, redis_url: str, upstream_timeout_s: float) -> dict:
    """The gateway processes' environment: the test database through the forwarder, the suite's Redis."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_XDIST_WORKER"}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        GATEWAY_UPSTREAM_TIMEOUT_S=str(upstream_timeout_s),
        DJANGO_SETTINGS_MODULE="gateway_project.settings",
    )
    return env


def database_url_via(port: int, db_name: str) -> str:
    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/x")
    return re.sub(r"@[^/@]+/[^/]*$", f"@127.0.0.1:{port}/{db_name}", url)


def stop_all(services) -> None:
    for service in services:
        if service.process is not None:
            service.send(signal.SIGKILL)  # the group too: a supervisor's workers outlive nothing
            service.process.wait(10)

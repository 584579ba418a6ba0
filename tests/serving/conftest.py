"""`python -m gateway_project.serve` as an operator runs it: the supervisor and its daphne workers
as real processes on the test database, the fake upstream of tests/proxy in this process."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection

from tests.proxy.conftest import World
from tests.proxy.fake_upstream import start_fake_upstream

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"Listening on TCP address 127\.0\.0\.1:(\d+)")


@dataclass
class Serve:
    process: subprocess.Popen
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{LISTENING.search(self.log).group(1)}"

    def workers(self) -> set[int]:
        """The pids of the supervisor's live children."""
        pids = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.process.pid and fields[0] != "Z":
                    pids.add(int(stat.parent.name))
        return pids

    def wait_listening(self, count: int, timeout: float = 60) -> None:
        """Until `count` workers have logged that they listen (the supervisor's own line aside)."""
        deadline = time.monotonic() + timeout
        while len(LISTENING.findall(self.log)) < count + 1:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"serve did not start {count} workers:\n{self.log}")
            time.sleep(0.05)


def start_serve(workers: int, **env_extra: str) -> Serve:
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": settings.CACHES["default"].get("LOCATION", ""),
        "DJANGO_SETTINGS_MODULE": "gateway_project.settings",
        "PYTHONUNBUFFERED": "1",
        **env_extra,
    }
    log = Path(tempfile.mkstemp(prefix="serve-", suffix=".log")[1])
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway_project.serve", "--workers", str(workers), "-b", "127.0.0.1", "-p", "0"],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Serve(process=process, log_path=log)
    server.wait_listening(workers)
    return server


@pytest.fixture(scope="module")
def fake():
    fake, stop = start_fake_upstream()
    yield fake
    stop()


@pytest.fixture
def serve_factory(transactional_db, fake):
    started: list[Serve] = []

    def start(workers: int, **env) -> Serve:
        started.append(start_serve(workers, **env))
        return started[-1]

    yield start
    for server in started:
        stop_serve(server)


def stop_serve(server: Serve) -> None:
    workers = server.workers()
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(5)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def arrange(fake):
    fake.requests.clear()
    return lambda server: World(server.url, fake.url)


def chat(url: str, key: str, model: str, *, stream: bool = False, timeout: float = 30) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    with httpx.Client(timeout=timeout) as client:
        return client.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})

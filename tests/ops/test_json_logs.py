"""GATEWAY_LOG_FORMAT=json: every line of every process is one JSON object. The real processes (the
serve supervisor and its daphne worker, a Celery worker, Celery beat) run with the documented
production environment on the test database; every line they write is parsed."""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from ops import heartbeat
from tests.factories import PriceVersionFactory
from tests.proxy.conftest import World
from tests.serving.conftest import LISTENING

from .conftest import ROOT, production_env

pytestmark = pytest.mark.django_db(transaction=True)


def start(command: list[str], env: dict) -> tuple[subprocess.Popen, Path]:
    log = Path(tempfile.mkstemp(prefix="json-logs-", suffix=".log")[1])
    with log.open("w") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    return process, log


def wait_for(log: Path, pattern: str, process: subprocess.Popen, timeout: float = 90) -> re.Match:
    deadline = time.monotonic() + timeout
    while not (found := re.search(pattern, log.read_text())):
        assert process.poll() is None and time.monotonic() < deadline, f"no {pattern!r} in:\n{log.read_text()}"
        time.sleep(0.1)
    return found


def parsed(log: Path) -> list[dict]:
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            pytest.fail(f"not JSON in {log.name}: {line!r}\n{log.read_text()}")
    return [json.loads(line) for line in lines]


@pytest.fixture
def production_processes(test_db_name, tmp_path, collected_static, settings):
    env = production_env(
        DATABASE_URL=re.sub(r"/[^/]*$", f"/{test_db_name}", production_env()["DATABASE_URL"]),
        STATIC_ROOT=str(collected_static),
        GATEWAY_BEHIND_TLS_PROXY="false",
        SECURE_SSL_REDIRECT="false",
        ALLOWED_HOSTS="127.0.0.1",
        GATEWAY_AUTH_FAILURES_PER_MINUTE="2",
        GATEWAY_SHUTDOWN_GRACE_S="5",
        GATEWAY_SPOOL_DIR=str(tmp_path / "spool"),
        PYTHONUNBUFFERED="1",
    )
    env.pop("CELERY_TASK_ALWAYS_EAGER", None)
    settings.GATEWAY_ENCRYPTION_KEY = env["GATEWAY_ENCRYPTION_KEY"]  # the provider key, as the servers read it
    assert env["GATEWAY_LOG_FORMAT"] == "json"  # as .env.example sets it
    heartbeat._redis().delete(heartbeat.KEY)
    celery = [sys.executable, "-m", "celery", "-A", "gateway_project"]
    started = {
        "serve": start([sys.executable, "-m", "gateway_project.serve", "--workers", "1", "-p", "0"], env),
        "worker": start([*celery, "worker", "-l", "info", "-c", "1", "-n", f"json-logs-{os.getpid()}@%h"], env),
        "beat": start([*celery, "beat", "-l", "info", "--schedule", str(tmp_path / "beat-schedule")], env),
    }
    yield env, started
    for process, _ in started.values():
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.mark.slow
def test_every_line_of_the_web_supervisor_worker_and_beat_is_json(production_processes, fake):
    env, started = production_processes
    serve, serve_log = started["serve"]
    worker, worker_log = started["worker"]
    beat, beat_log = started["beat"]
    deadline = time.monotonic() + 90
    while len(LISTENING.findall(serve_log.read_text())) < 2:  # the supervisor's line, then its worker's
        assert serve.poll() is None and time.monotonic() < deadline, serve_log.read_text()
        time.sleep(0.1)
    url = f"http://127.0.0.1:{LISTENING.search(serve_log.read_text()).group(1)}"
    world = World(url, fake.url)
    allocation = world.allocation(priced=False)
    PriceVersionFactory(model=allocation.model, input_per_1m=Decimal("0"), output_per_1m=Decimal("0"))
    messages = [{"role": "user", "content": "hi"}]
    world.client(allocation.plaintext).chat.completions.create(
        model=allocation.model.slug, messages=messages, extra_headers={"X-Request-Id": "json-1"}
    )
    for _ in range(2):
        httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer sk-gw-" + "z" * 43})
    wait_for(worker_log, r" ready\.", worker)
    celery_call = [sys.executable, "-m", "celery", "-A", "gateway_project", "call", "quota.settlements_replay"]
    subprocess.run(celery_call, cwd=ROOT, env=env, check=True, capture_output=True, timeout=60)
    wait_for(worker_log, r"Task quota\.settlements_replay\[[\w-]+\] succeeded", worker)
    wait_for(beat_log, r"beat: Starting", beat)
    ages = heartbeat.ages()  # both processes wrote their heartbeat as they started
    assert all(age is not None and age < 60 for age in ages.values()), ages
    os.kill(_children(serve.pid)[0], signal.SIGKILL)  # the supervisor restarts it and says so
    wait_for(serve_log, r"starting another", serve)
    while len(LISTENING.findall(serve_log.read_text())) < 3:
        assert time.monotonic() < deadline + 60, serve_log.read_text()
        time.sleep(0.1)
    for process in (serve, worker, beat):
        process.send_signal(signal.SIGTERM)
    for process in (serve, worker, beat):
        assert process.wait(60) == 0

    web = parsed(serve_log)
    messages = [line["message"] for line in web]
    [call] = [line for line in web if line.get("request_id") == "json-1"]
    assert call["cost_usd"] == "0" and call["outcome"] == "success"
    assert any(line["logger"] == "daphne.access" and line["request"] == "POST /v1/chat/completions" for line in web)
    [limit] = [line for line in web if line["logger"] == "gateway.auth"]
    assert limit["client_address"] == "127.0.0.1" and limit["refused"] == 2
    assert any("exited" in m and "starting another" in m for m in messages)
    assert any(m.startswith("shutdown: draining") for m in messages) and "all workers exited" in messages
    assert any("succeeded" in line["message"] for line in parsed(worker_log))
    assert any("Warm shutdown" in line["message"] for line in parsed(worker_log))
    assert any(line["logger"] == "celery.beat" for line in parsed(beat_log))


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found

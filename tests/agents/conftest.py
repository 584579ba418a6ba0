"""The Codex CLI (npm `@openai/codex`, pinned in tests/agents/package.json and installed by `make
test`) run against `python -m gateway_project.serve` as an operator runs it, in a scratch home with
the gateway configured as its model provider the way the README says. A tap between Codex and the
gateway keeps the answers' headers; Codex reaches nothing but loopback (its proxy variables point
at a closed port, update checks and analytics are off)."""

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.proxy.fake_upstream import serve_in_thread
from tests.serving.conftest import start_serve, stop_serve

from .responses_upstream import start_responses_upstream

AGENTS = Path(__file__).parent
CODEX = AGENTS / "node_modules" / ".bin" / "codex"
CLOSED_PORT_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection fails at once
CONFIG = """\
model = "{model}"
model_provider = "gateway"
check_for_update_on_startup = false

[model_providers.gateway]
name = "Organisation gateway"
base_url = "{base_url}"
wire_api = "responses"
env_key = "GATEWAY_API_KEY"
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false

[feedback]
enabled = false
"""


@dataclass
class Tap:
    """A pass-through between Codex and the gateway that remembers each answer's status and headers."""

    target: str = ""
    url: str = ""
    answers: list[dict] = field(default_factory=list)

    async def relay(self, request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.post(self.target + request.path, data=await request.read(), headers=headers) as answer,
        ):
            self.answers.append({"status": answer.status, "headers": {k.lower(): v for k, v in answer.headers.items()}})
            kept = ("content-type", "x-request-id", "x-gateway-removed-tools")
            response = web.StreamResponse(
                status=answer.status, headers={k: v for k, v in answer.headers.items() if k.lower() in kept}
            )
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            return response


@pytest.fixture(scope="module")
def upstream():
    upstream, stop = start_responses_upstream()
    yield upstream
    stop()


@pytest.fixture
def gateway(transactional_db, upstream):
    """The gateway (one serve worker) and the tap in front of it; the upstream's log cleared."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    assert CODEX.exists(), "run `make test` (it installs the Codex CLI into tests/agents)"
    upstream.requests.clear()
    upstream.script.clear()
    server = start_serve(1)
    tap = Tap(target=server.url)
    app = web.Application()
    app.router.add_post("/{path:.*}", tap.relay)
    stop_tap = serve_in_thread(app, lambda url: setattr(tap, "url", url))
    yield tap
    stop_tap()
    stop_serve(server)


def codex_exec(tap: Tap, *, key: str, model: str, prompt: str, home: Path) -> subprocess.CompletedProcess:
    """`codex exec PROMPT` in a scratch home whose config names the gateway (through the tap) as its
    provider; read-only sandbox, no approvals, nothing read from stdin."""
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(CONFIG.format(model=model, base_url=f"{tap.url}/v1"))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "CODEX_HOME": str(codex_home),
        "GATEWAY_API_KEY": key,
        "HTTP_PROXY": CLOSED_PORT_PROXY,
        "HTTPS_PROXY": CLOSED_PORT_PROXY,
        "ALL_PROXY": CLOSED_PORT_PROXY,
        "NO_PROXY": "127.0.0.1,localhost",
        "RUST_LOG": "error",
    }
    command = [str(CODEX), "exec", "--skip-git-repo-check", "--sandbox", "read-only", "--color", "never", prompt]
    return subprocess.run(
        command, cwd=home, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from portal import sso

PROVIDER_DIR = Path(__file__).parent / "oidc_provider"
CLIENT_ID, CLIENT_SECRET = "gateway", "gateway-test-secret"


@pytest.fixture
def idp_groups_file(tmp_path):
    """Where a test sets an identity's `groups` claim between sign-ins: {"<login>": [groups]}."""
    return tmp_path / "groups.json"


@pytest.fixture
def oidc_provider(live_server, settings, idp_groups_file):
    """A real OpenID Connect provider (node-oidc-provider, installed by `make test`) on a free port,
    with the gateway's SSO settings pointing at it."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    assert (PROVIDER_DIR / "node_modules").exists(), "run `make test` (it installs tests/sso/oidc_provider)"
    callback = live_server.url + "/accounts/sso/callback/"
    process = subprocess.Popen(
        ["node", "server.mjs", "0", callback],
        cwd=PROVIDER_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "NODE_NO_WARNINGS": "1", "OIDC_GROUPS_FILE": str(idp_groups_file)},
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("ready"), f"the OIDC provider did not start: {line!r}"
        issuer = f"http://127.0.0.1:{line.split()[1]}"
        settings.GATEWAY_OIDC_ISSUER = issuer
        settings.GATEWAY_OIDC_CLIENT_ID = CLIENT_ID
        settings.GATEWAY_OIDC_CLIENT_SECRET = CLIENT_SECRET
        settings.GATEWAY_OIDC_ALLOWED_DOMAINS = ["example.org"]
        settings.GATEWAY_OIDC_LABEL = "Sign in with Example"
        settings.GATEWAY_OIDC_STAFF_GROUPS = ["gateway-admins"]
        yield issuer
    finally:
        process.terminate()
        process.wait(10)
        sso._discovery.clear()

"""The one-line Codex installer and its restore, run with `sh` in a scratch HOME against the live
server (`gateway_project.serve`), the approval given through the member API as a member would."""

import os
import re
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from allocations.models import ApiKey, DeviceAuthorization
from tests.factories import AllocationFactory, CatalogModelFactory, MemberFactory

PASSWORD = "a-long-test-password-9"
ORIGINAL = 'model = "o3"\n# the member\'s own settings\n'


@pytest.fixture
def _fast_password_hashing():
    """The served gateway checks passwords with the production hashers: keep them here."""


@pytest.fixture
def fast_password_hasher():
    """(see _fast_password_hashing)"""


@pytest.fixture
def member(transactional_db):
    alice = MemberFactory(username="alice")
    alice.set_password(PASSWORD)
    alice.save()
    allocation = AllocationFactory(member=alice, model=CatalogModelFactory(slug="openai/gpt-4o-mini"))
    return alice, allocation


def signed_in(url: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=30, follow_redirects=False)
    client.get("/accounts/login/")
    form = {"username": "alice", "password": PASSWORD, "csrfmiddlewaretoken": client.cookies["csrftoken"]}
    assert client.post("/accounts/login/", data=form).status_code == 302
    return client


def run_installer(url: str, home: Path, approve) -> subprocess.CompletedProcess:
    script = home / "codex.sh"
    script.write_text(httpx.get(f"{url}/install/codex.sh").text)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "GATEWAY_KEY_LABEL": "test laptop"}
    process = subprocess.Popen(["sh", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shown = ""
    while "confirm the code" not in shown:
        line = process.stdout.readline()
        assert line, process.stderr.read()
        shown += line
    user_code = re.search(r"confirm the code: (\S+)", shown).group(1)
    assert f"{url}/portal/device/?user_code={user_code}" in shown
    approve(user_code)
    out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, shown + out, err)


def test_install_writes_the_codex_config_and_a_private_key_file_and_restore_undoes_it(
    serve_factory,
    member,
    tmp_path,
):
    alice, allocation = member
    server = serve_factory(1)
    codex = tmp_path / ".codex"
    codex.mkdir()
    (codex / "config.toml").write_text(ORIGINAL)
    browser = signed_in(server.url)

    def approve(user_code):
        response = browser.post(
            f"/api/me/device/{user_code}/approve",
            json={"allocations": [str(allocation.pk)]},
            headers={"X-CSRFToken": browser.cookies["csrftoken"], "Referer": server.url},
        )
        assert response.status_code == 200, response.text

    started = time.monotonic()
    result = run_installer(server.url, tmp_path, approve)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 5  # it waited the interval before polling

    key_file = codex / "gateway.key"
    plaintext = key_file.read_text().strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = ApiKey.objects.get(key_hash=ApiKey.hash(plaintext))
    assert key.name == "test laptop" and key.member == alice
    config = (codex / "config.toml").read_text()
    assert 'model = "openai/gpt-4o-mini"' in config
    assert 'model_provider = "gateway"' in config
    assert f'base_url = "{server.url}/v1"' in config
    assert 'wire_api = "responses"' in config and 'env_key = "GATEWAY_API_KEY"' in config
    assert (codex / "config.toml.gateway-backup").read_text() == ORIGINAL
    assert DeviceAuthorization.objects.get().status == "delivered"
    # The key works on /v1 as Codex would send it.
    listed = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {plaintext}"})
    assert [m["id"] for m in listed.json()["data"]] == ["openai/gpt-4o-mini"]

    restore = tmp_path / "restore.sh"
    restore.write_text(httpx.get(f"{server.url}/install/codex-restore.sh").text)
    undone = subprocess.run(["sh", str(restore)], env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert undone.returncode == 0
    assert (codex / "config.toml").read_text() == ORIGINAL
    assert not key_file.exists() and not (codex / "config.toml.gateway-backup").exists()


def test_a_denied_sign_in_leaves_the_config_alone(serve_factory, member, tmp_path):
    server = serve_factory(1)
    browser = signed_in(server.url)

    def deny(user_code):
        headers = {"X-CSRFToken": browser.cookies["csrftoken"], "Referer": server.url}
        assert browser.post(f"/api/me/device/{user_code}/deny", headers=headers).status_code == 200

    result = run_installer(server.url, tmp_path, deny)
    assert result.returncode == 1 and "denied" in result.stderr
    assert not (tmp_path / ".codex" / "config.toml").exists()
    assert not (tmp_path / ".codex" / "gateway.key").exists()


def test_the_scripts_are_posix_sh_with_the_gateway_url_filled_in(serve_factory, member):
    server = serve_factory(1)
    for name in ("codex.sh", "codex-restore.sh"):
        response = httpx.get(f"{server.url}/install/{name}")
        assert response.status_code == 200 and response.text.startswith("#!/bin/sh\n")
        assert server.url in response.text and "{{" not in response.text
        check = subprocess.run(["dash", "-n"], input=response.text, text=True, capture_output=True)
        assert check.returncode == 0, check.stderr

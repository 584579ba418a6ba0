"""compose.yaml as `docker compose` reads it: parsed here, and checked by Debian's `docker-compose
config` where that is installed (the images it names cannot be pulled on this machine)."""

import re
import shutil
import subprocess

import pytest
import yaml

from .conftest import ROOT

GATEWAY_SERVICES = ("migrate", "web", "worker", "beat")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_runs_the_stores_a_one_shot_migrate_then_web_worker_and_beat_from_the_env_file(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "redis", *GATEWAY_SERVICES}
    assert services["postgres"]["image"] == "${POSTGRES_IMAGE:-postgres:16-bookworm}"
    assert services["redis"]["image"] == "${REDIS_IMAGE:-redis:7-bookworm}"
    for name in GATEWAY_SERVICES:
        service = services[name]
        # `make image` builds it (the CA bundle is a build secret that compose 1.29 cannot pass)
        assert service["env_file"] == ".env" and "build" not in service, name
        assert service["image"] == "${GATEWAY_IMAGE:-ai-gateway:latest}"
        assert set(service["environment"]) == {"DATABASE_URL", "REDIS_URL"}
        assert service["volumes"] == ["spool:/var/lib/gateway/spool"]  # GATEWAY_SPOOL_DIR in the image
    assert services["migrate"]["command"] == ["python3", "manage.py", "migrate", "--noinput"]
    assert services["migrate"]["restart"] == "no"
    for name in ("web", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert "command" not in services["web"]  # the image's: serve --workers


def test_every_setting_compose_interpolates_is_listed_in_the_env_example():
    listed = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line}
    text = (ROOT / "compose.yaml").read_text()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    assert required and required <= listed
    assert set(re.findall(r"\$\{([A-Z_]+):-", text)) <= listed  # GATEWAY_IMAGE, GATEWAY_PORT, the stores' images


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_docker_compose_accepts_the_file_with_the_env_example(tmp_path):
    shutil.copy(ROOT / "compose.yaml", tmp_path / "compose.yaml")
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")  # what an operator does first
    result = subprocess.run(
        ["docker-compose", "-f", "compose.yaml", "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["services"]["web"]["environment"]["GATEWAY_LOG_FORMAT"] == "json"
    assert resolved["services"]["web"]["environment"]["DATABASE_URL"].startswith(
        "postgres://gateway:change-me@postgres"
    )


def test_the_example_alert_rules_parse_and_use_only_metrics_the_gateway_exports():
    from ops import metrics

    rules = yaml.safe_load((ROOT / "docs" / "prometheus-alerts.yml").read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert {"GatewayCapRefusalsSpike", "GatewayUpstreamErrors", "GatewaySettlementsSpooled"} <= names
    assert "GatewayReservationsStuck" in names
    exported = {m._name for m in vars(metrics).values() if hasattr(m, "_name") and hasattr(m, "_type")}
    exported |= {"gateway_reservations_open", "gateway_reservations_expired", "gateway_settlements_spooled"}
    exported |= {"gateway_redis_up", "gateway_celery_heartbeat_age_seconds"}
    assert {"GatewayCeleryWorkerSilent", "GatewayCeleryBeatSilent", "GatewayRedisDown"} <= names
    for rule in rules:
        for used in re.findall(r"\b(gateway_[a-z_]+?)(?:_total|_bucket|_count|_sum)?\b", rule["expr"]):
            assert used in exported, (rule["alert"], used)


def test_the_web_port_is_published_on_loopback_unless_the_operator_binds_it_elsewhere(compose):
    (published,) = compose["services"]["web"]["ports"]
    assert published.startswith("${GATEWAY_BIND:-127.0.0.1}:")

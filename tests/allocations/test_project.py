"""The project from a fresh clone's perspective: migrations both ways, and the app needing only requirements.txt
(the production image's; `make run` adds requirements-demo.txt for its own PostgreSQL)."""

import ast
import io
import os
import re
import subprocess
import sys
import uuid
from importlib import metadata
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from packaging.requirements import Requirement

ROOT = Path(settings.BASE_DIR)
APP_CODE = ["allocations", "quota", "proxy", "realtime", "portal", "gateway_project", "manage.py"]


# --- migrations -----------------------------------------------------------------------------------------


def manage(*args, database_url: str) -> str:
    env = {**os.environ, "DATABASE_URL": database_url}
    env.pop("REDIS_URL", None)
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def scratch_postgres():
    db = settings.DATABASES["default"]
    name = f"gw_migrations_{uuid.uuid4().hex[:10]}"
    params = {"host": db["HOST"] or "127.0.0.1", "port": db["PORT"] or 5432, "user": db["USER"], "dbname": "postgres"}
    if db.get("PASSWORD"):
        params["password"] = db["PASSWORD"]
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    yield f"postgres://{auth}@{params['host']}:{params['port']}/{name}", {**params, "dbname": name}
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _tables_and_trigger(params) -> tuple[set, bool]:
    with psycopg.connect(**params) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        trigger = conn.execute(
            "SELECT 1 FROM pg_trigger WHERE tgname = 'allocations_auditevent_no_update_delete'"
        ).fetchone()
    return tables, trigger is not None


@pytest.mark.slow
def test_migrations_run_forward_from_zero_and_back_to_zero_on_postgresql(scratch_postgres):
    url, params = scratch_postgres
    manage("migrate", "--noinput", database_url=url)
    tables, trigger = _tables_and_trigger(params)
    assert {"allocations_allocation", "allocations_auditevent", "quota_callrecord"} <= tables and trigger
    manage("migrate", "allocations", "zero", "--noinput", database_url=url)
    tables, trigger = _tables_and_trigger(params)
    assert not any(t.startswith(("allocations_", "quota_")) for t in tables) and not trigger
    manage("migrate", "--noinput", database_url=url)  # and forward again
    assert _tables_and_trigger(params)[1]


@pytest.mark.django_db
def test_the_allocations_models_have_no_missing_migration():
    call_command("makemigrations", "allocations", "--check", "--dry-run", stdout=io.StringIO())


# --- requirements.txt suffices for the app ---------------------------------------------------------------------


def _top_level_imports(path: Path) -> set[str]:
    names = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    guarded = {
        id(node)
        for handler_parent in ast.walk(tree)
        if isinstance(handler_parent, ast.Try)
        and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
            for h in handler_parent.handlers
        )
        for stmt in handler_parent.body
        for node in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _runtime_files():
    for entry in APP_CODE:
        path = ROOT / entry
        yield from ([path] if path.is_file() else path.rglob("*.py"))


def _requirement_closure() -> set[str]:
    """Distributions installed by `pip install -r requirements.txt`: the listed ones and their dependencies."""
    todo = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            todo.append(Requirement(line))
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name in seen:
            continue
        seen.add(name)
        for dep in metadata.requires(req.name) or []:
            dep_req = Requirement(dep)
            extras = req.extras or {""}
            if dep_req.marker is None or any(dep_req.marker.evaluate({"extra": e}) for e in extras):
                todo.append(dep_req)
    return seen


def test_every_module_the_app_imports_is_installed_by_requirements_txt():
    local = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()} | {"manage"}
    imported = set().union(*(_top_level_imports(p) for p in _runtime_files()))
    third_party = imported - set(sys.stdlib_module_names) - local - {"__future__"}
    providers = metadata.packages_distributions()
    closure = _requirement_closure()
    missing = {}
    for module in sorted(third_party):
        dists = {re.sub(r"[-_.]+", "-", d).lower() for d in providers.get(module, [])}
        if not dists & closure:
            missing[module] = sorted(dists) or ["not installed"]
    assert not missing, f"imported by app code but not installed by requirements.txt: {missing}"


def test_every_pinned_requirement_is_what_the_tests_run_against():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        installed = metadata.version(req.name)
        assert req.specifier.contains(installed, prereleases=True), f"{req} but {installed} is installed"


def test_test_only_packages_are_not_runtime_requirements():
    runtime = _requirement_closure()
    for dev_only in ("pytest", "factory-boy", "ruff", "playwright", "openai"):
        assert dev_only not in runtime, dev_only

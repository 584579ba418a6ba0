"""The docs name only what exists: every project path, `module.attribute`, `GATEWAY_*` setting,
`manage.py` command, `python -m` module and `make` target that README.md, bench/README.md and
docs/*.md mention is looked up in the tree.

What is checked, and where, keeps false positives out: paths only when they start with one of the
project's own folders (not `../shared/…`, `/proc/…`); dotted names only inside backticks and only
when they start with one of the project's packages; make targets only inside code (inline or
fenced), where `make` is the command and not the verb.
"""

import functools
import importlib
import re
import subprocess
from pathlib import Path

import pytest
from django.apps import apps
from django.core.management import get_commands

from gateway_project.celery import app as celery_app

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").glob("*.md")])
PACKAGES = ("allocations", "backoffice", "gateway_project", "notifications", "ops", "portal", "proxy", "quota",
            "realtime", "tests")  # fmt: skip
FOLDERS = (*PACKAGES, "bench", "docs", "scripts", "locale", "templates", "static", ".ci")

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
PATH = re.compile(r"(?<![\w./-])(?:" + "|".join(re.escape(f) for f in FOLDERS) + r")/[\w./-]*[\w/]")
DOTTED = re.compile(r"^(?:" + "|".join(PACKAGES) + r")(?:\.\w+)+(?=\(|$)")
SETTING = re.compile(r"\bGATEWAY_[A-Z0-9_]*[A-Z0-9](?![\w*])")
MANAGE = re.compile(r"\bmanage\.py[ \t]+([a-z_]+)")
PYTHON_M = re.compile(r"\bpython3? -m ((?:" + "|".join(PACKAGES) + r")(?:\.\w+)*)")
MAKE = re.compile(r"(?:^|[\s;&|(])make[ \t]+([a-z][\w-]*)(?![\w/.-])")  # a file target (a/b) is not checked
NAME_IN_FILE = re.compile(r"`(\w+)`\s+in\s+`([\w/]+\.py)`")


def _text(doc: Path) -> str:
    return doc.read_text(encoding="utf-8")


def _code(text: str) -> list[str]:
    """The code of a document: its fenced blocks and inline spans."""
    fenced = FENCE.findall(text)
    return fenced + INLINE.findall(FENCE.sub("", text))


@functools.cache
def _tracked() -> frozenset[str]:
    """Every path git tracks and every folder above one (what a fresh clone has)."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    folders = {str(Path(f).parents[i]) + "/" for f in files for i in range(len(Path(f).parents) - 1)}
    return frozenset(files) | frozenset(folders)


def _ignored(paths: list[str]) -> set[str]:
    """The paths git ignores: places the tools write (bench/results/raw/, var/), named on purpose."""
    if not paths:
        return set()
    command = ["git", "check-ignore", "--no-index", "--stdin"]
    out = subprocess.run(command, cwd=ROOT, input="\n".join(paths), capture_output=True, text=True)
    return set(out.stdout.split())


def _is_path(found: str, *, in_code: bool) -> bool:
    """In prose a path must look like one (a file's extension or a folder's slash): "per
    portal/admin/realtime request" names three surfaces, not a folder."""
    return "*" not in found and (in_code or found.endswith("/") or re.search(r"\.\w+$", found) is not None)


def missing_paths(text: str) -> list[str]:
    code = "\n".join(_code(text))
    prose = INLINE.sub(" ", FENCE.sub("", text))
    found = {m.group(0) for m in PATH.finditer(code) if _is_path(m.group(0), in_code=True)}
    found |= {m.group(0) for m in PATH.finditer(prose) if _is_path(m.group(0), in_code=False)}
    tracked = _tracked()
    absent = sorted(p for p in found if p.rstrip("/") not in tracked and p.rstrip("/") + "/" not in tracked)
    ignored = _ignored(absent)
    return [p for p in absent if p not in ignored]


def _is_model(dotted: str) -> bool:
    """`allocations.Member`: a model by its label."""
    try:
        apps.get_model(dotted)
    except (LookupError, ValueError):
        return False
    return True


@functools.cache
def _tasks() -> frozenset[str]:
    """Celery task names (`quota.reservations_sweep`), which read like module paths."""
    celery_app.loader.import_default_modules()
    return frozenset(celery_app.tasks)


def _resolves(dotted: str) -> bool:
    if dotted in _tasks() or _is_model(dotted):
        return True
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def missing_dotted(text: str) -> list[str]:
    names = {m.group(0) for span in INLINE.findall(text) for m in [DOTTED.match(span.strip())] if m}
    return sorted(n for n in names if not _resolves(n))


def missing_names_in_files(text: str) -> list[str]:
    """ "`name` in `path.py`": the name is defined (def, class or assignment) in that file."""
    missing = []
    for name, path in set(NAME_IN_FILE.findall(text)):
        source = ROOT / path
        defined = re.compile(rf"^\s*(?:async def|def|class) {name}\b|^{name}\b\s*[:=]", re.M)
        if source.is_file() and not defined.search(source.read_text(encoding="utf-8")):
            missing.append(f"{name} in {path}")
    return sorted(missing)


@functools.cache
def _source_text() -> str:
    files = [ROOT / f for f in _tracked() if f.endswith((".py", ".sh", ".yaml", ".example")) and "/" in f]
    files += [ROOT / "Makefile", ROOT / "Dockerfile", ROOT / ".env.example", ROOT / "compose.yaml"]
    return "\n".join(f.read_text(encoding="utf-8") for f in files if f.is_file() and not f.name.startswith("test_"))


def missing_settings(text: str) -> list[str]:
    return sorted({s for s in SETTING.findall(text) if not re.search(rf"\b{s}\b", _source_text())})


@functools.cache
def _make_targets() -> frozenset[str]:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    return frozenset(re.findall(r"^([a-z][\w-]*)\s*:(?!=)", makefile, re.M))


def missing_commands(text: str) -> list[str]:
    code = "\n".join(_code(text))
    missing = {f"manage.py {c}" for c in MANAGE.findall(code) if c not in get_commands()}
    missing |= {f"python -m {m}" for m in PYTHON_M.findall(text) if importlib.util.find_spec(m) is None}
    missing |= {f"make {t}" for t in MAKE.findall(code) if t not in _make_targets()}
    return sorted(missing)


CHECKS = (missing_paths, missing_dotted, missing_names_in_files, missing_settings, missing_commands)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_the_doc_names_only_what_exists(doc):
    text = _text(doc)
    stale = {check.__name__: found for check in CHECKS if (found := check(text))}
    assert not stale, f"{doc.relative_to(ROOT)} names what does not exist: {stale}"


def test_each_check_finds_a_planted_stale_name():
    planted = """
    See `quota/ledger/portable.py` and quota/nowhere/ for the adapter; `quota.ledger.sync.portable_reserve()`
    and `quota.nowhere.thing` do it; `admit` in `quota/ledger/sync.py` is fine, `reserve` in
    `quota/ledger/sync.py` is not. Set `GATEWAY_NO_SUCH_SETTING`; run `manage.py no_such_command`,
    `python -m gateway_project.no_such_module` and `PORT=1 make no-such-target`.
    """
    assert missing_paths(planted) == ["quota/ledger/portable.py", "quota/nowhere/"]
    assert missing_dotted(planted) == ["quota.ledger.sync.portable_reserve", "quota.nowhere.thing"]
    assert missing_names_in_files(planted) == ["reserve in quota/ledger/sync.py"]
    assert missing_settings(planted) == ["GATEWAY_NO_SUCH_SETTING"]
    assert missing_commands(planted) == [
        "make no-such-target",
        "manage.py no_such_command",
        "python -m gateway_project.no_such_module",
    ]
    fine = "`quota/ledger/sync.py`, `quota.ledger.sync.admit`, `GATEWAY_CALL_LOG`, `make run`, `manage.py migrate`"
    assert not any(check(fine) for check in CHECKS)

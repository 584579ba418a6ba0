"""`manage.py load_prices FILE`: append price versions from a YAML or JSON list of price rows.

Rows are the admin API's price body (SPEC section 8). Every row is checked before anything is
written; one bad row fails the whole file with one message per bad row, and the rows are then
appended in one transaction, so a file is never half loaded.
"""

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from django.core.management.base import CommandError, CommandParser
from django.db import transaction

from allocations.exceptions import BadRequest
from allocations.management.base import AuditedCommand
from quota.price_rows import price_row_parse
from quota.services import price_version_add


class _DecimalLoader(yaml.SafeLoader):
    """YAML floats become Decimals from their text, never binary floats."""


def _decimal(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Decimal:
    return Decimal(loader.construct_scalar(node))


_DecimalLoader.add_constructor("tag:yaml.org,2002:float", _decimal)


def read_rows(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            rows = json.loads(text, parse_float=Decimal)
        else:
            rows = yaml.load(text, Loader=_DecimalLoader)  # noqa: S506 (a SafeLoader subclass)
    except (ValueError, yaml.YAMLError) as exc:
        raise CommandError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}") from exc
    if isinstance(rows, dict) and isinstance(rows.get("prices"), list):
        rows = rows["prices"]
    if not isinstance(rows, list):
        raise CommandError(f"{path}: expected a list of price rows")
    return rows


def _describe(exc: BadRequest) -> str:
    if not exc.fields:
        return exc.message
    return "; ".join(f"{field}: {' '.join(errors)}" for field, errors in exc.fields.items())


class Command(AuditedCommand):
    help = "Append price versions from a YAML or JSON file (a list of admin-API price rows); all or nothing."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)

    def handle(self, *args: Any, file: Path, **options: Any) -> None:
        if not file.is_file():
            raise CommandError(f"{file}: no such file")
        rows = read_rows(file)
        parsed, errors = [], []
        for index, row in enumerate(rows):
            try:
                parsed.append(price_row_parse(row))
            except BadRequest as exc:
                errors.append(f"row {index}: {_describe(exc)}")
        if errors:
            raise CommandError(f"{len(errors)} bad row(s) in {file}; nothing loaded:\n  " + "\n  ".join(errors))
        with transaction.atomic():
            for index, kwargs in enumerate(parsed, start=1):
                price_version_add(**kwargs)
                if index % 100 == 0:
                    self.stdout.write(f"  {index}/{len(parsed)} rows")
        self.stdout.write(f"Loaded {len(parsed)} price version(s) from {file}.")

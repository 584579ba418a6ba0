#!/usr/bin/env python3
"""One CSV row per measured figure of the given raw runs (bench/results/raw/*.jsonl), for
bench/results/summary.csv: the runs themselves stay out of git, their figures stay readable.

  bench/summarize.py bench/results/raw/20261129-2149.jsonl >> bench/results/summary.csv
  bench/summarize.py --header                      # the header line alone
"""

import csv
import json
import statistics
import sys
from pathlib import Path

COLUMNS = ("run", "target", "case", "stream", "concurrency", "cpu_ms_per_call", "rps", "ratio", "added_p50_ms",
           "added_p99_ms", "errors", "loadavg1", "minstr_per_call")  # fmt: skip
SOURCES = {  # column: the keys that hold it in the scripts' rows, first found wins
    "target": ("variant", "target"),
    "case": ("case",),
    "stream": ("stream",),
    "concurrency": ("concurrency",),
    "cpu_ms_per_call": ("gateway_cpu_ms_per_req", "cpu_ms_per_call_median", "cpu_ms_per_call"),
    "rps": ("gateway_rps", "calls_per_s_median", "rps_median"),
    "ratio": ("ratio",),
    "added_p50_ms": ("added_p50_ms",),
    "added_p99_ms": ("added_p99_ms",),
    "errors": ("gateway_errors",),
    "loadavg1": ("loadavg1",),
    "minstr_per_call": ("minstr_per_call_median",),
}


def rows(path: Path):
    for line in path.read_text().splitlines():
        if not line.startswith("{"):
            continue
        raw = json.loads(line)
        if "concurrency" not in raw:
            continue
        row = {"run": path.stem}
        for column, keys in SOURCES.items():
            row[column] = next((raw[key] for key in keys if key in raw), "")
        if raw.get("run", "").startswith("variants-"):  # variants_alternate.py: the 50 ms JSON call, rounds
            row["case"] = row["case"] or "50ms"
            row["rps"] = round(statistics.median(raw["rps_rounds"]), 2)
            row["errors"] = raw["errors"]
        if isinstance(row["loadavg1"], list):  # wave_alternate.py, variants_alternate.py: the load of each round
            row["loadavg1"] = statistics.median(row["loadavg1"])
        if isinstance(row["loadavg1"], float):
            row["loadavg1"] = round(row["loadavg1"], 2)
        if "settlement_us_median" in raw:  # statement_cpu.py: a row per statement, PostgreSQL CPU (µs)
            for statement in ("admission", "settlement"):
                ms = round(raw[f"{statement}_us_median"] / 1000, 3)
                yield {**row, "case": f"postgres_cpu {statement}", "cpu_ms_per_call": ms}
            continue
        if "minstr_per_call_median" in raw:  # instructions_alternate.py: instructions, not time
            row["case"] = f"instructions {raw.get('model', '')}".strip()
        if "thin_p50_ms_rounds" in raw:  # wave_alternate.py: the client's p50 over the thin pass-through's
            row["case"] = f"wave {raw['case']} over thin"
            row["added_p50_ms"] = round(raw["p50_ms_median"] - statistics.median(raw["thin_p50_ms_rounds"]), 2)
        if row["cpu_ms_per_call"] == "" and "pg_cpu_us_per_call_median" in raw:  # group_hold.py: PostgreSQL's
            row["cpu_ms_per_call"] = round(raw["pg_cpu_us_per_call_median"] / 1000, 4)
        yield row
        if "pg_cpu_ms_per_call_median" in raw:  # alternate.py: the PostgreSQL side, a row of its own
            yield {**row, "case": "postgres_cpu", "cpu_ms_per_call": raw["pg_cpu_ms_per_call_median"]}


def main() -> None:
    out = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, lineterminator="\n")
    if sys.argv[1:] == ["--header"]:
        out.writeheader()
        return
    for name in sys.argv[1:]:
        out.writerows(rows(Path(name)))


if __name__ == "__main__":
    main()

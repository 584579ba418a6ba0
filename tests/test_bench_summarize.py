"""bench/summarize.py: each kind of raw run the bench writes becomes rows of summary.csv's columns."""

import csv
import io
import json
import sys

from bench import summarize


def _summary(tmp_path, monkeypatch, name: str, *raw: dict) -> list[dict]:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in raw) + "not a row\n")
    out = io.StringIO()
    monkeypatch.setattr(sys, "argv", ["summarize.py", str(path)])
    monkeypatch.setattr(sys, "stdout", out)
    summarize.main()
    return list(csv.DictReader(io.StringIO(out.getvalue()), fieldnames=summarize.COLUMNS))


def test_an_instruction_count_is_its_own_column(tmp_path, monkeypatch):
    rows = _summary(
        tmp_path,
        monkeypatch,
        "instructions-20261207-141941",
        {
            "target": "wt-a",
            "app": "gateway",
            "model": "bench0/gpt-4o-mini",
            "concurrency": 16,
            "rounds": 4,
            "minstr_per_call_median": 2.0412,
            "per_round": [2.04e6],
        },  # fmt: skip
    )
    assert rows == [
        {
            **dict.fromkeys(summarize.COLUMNS, ""),
            "run": "instructions-20261207-141941",
            "target": "wt-a",
            "case": "instructions bench0/gpt-4o-mini",
            "concurrency": "16",
            "minstr_per_call": "2.0412",
        }  # fmt: skip
    ]


def test_a_wave_run_gives_its_p50_over_the_thin_pass_through(tmp_path, monkeypatch):
    [row] = _summary(
        tmp_path,
        monkeypatch,
        "wave-20261207-121819",
        {
            "run": "wave-20261207-121819",
            "target": "main",
            "case": "50ms",
            "concurrency": 16,
            "p50_ms_rounds": [59.0, 61.0],
            "p50_ms_median": 60.0,
            "thin_p50_ms_rounds": [51.0, 52.5, 52.0],
            "rps_median": 250.5,
            "loadavg1": [0.5, 1.5, 0.7],
        },  # fmt: skip
    )
    assert (row["case"], row["added_p50_ms"], row["rps"]) == ("wave 50ms over thin", "8.0", "250.5")
    assert row["loadavg1"] == "0.7"
    assert row["cpu_ms_per_call"] == row["minstr_per_call"] == ""


def test_an_alternated_run_gives_the_postgresql_side_a_row_of_its_own(tmp_path, monkeypatch):
    rows = _summary(
        tmp_path,
        monkeypatch,
        "alternate-20261207-135330",
        {
            "variant": "main",
            "concurrency": 16,
            "cpu_ms_per_call_median": 0.534,
            "calls_per_s_median": 1734,
            "pg_cpu_ms_per_call_median": 0.31,
            "loadavg1": 1.5371,
        },  # fmt: skip
    )
    assert [(r["case"], r["cpu_ms_per_call"], r["loadavg1"]) for r in rows] == [
        ("", "0.534", "1.54"),
        ("postgres_cpu", "0.31", "1.54"),
    ]

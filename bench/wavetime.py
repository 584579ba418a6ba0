#!/usr/bin/env python3
"""Reads what `bench/wavetime/sitecustomize.py` recorded in a serve worker (/tmp/wavetime-<pid>.json)
and prints a call's accounting steps (ms, p50 / p90): the admission asked → its statement sent →
answered (committed) → the call has it; the same for the settlement; the request's time in the
handler and what is left of it besides the two waits; the statements by kind with their sizes,
the commits per settled call, and per wave (statements closer than --gap ms to the previous one
belong to its wave).

    bench/wavetime.py /tmp/wavetime-1234.json [--json]"""

import argparse
import collections
import json
import statistics


def pct(values: list, p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def steps(data: dict) -> dict:
    sent: dict[tuple[str, str], tuple] = {}
    for kind, start, end, ids, failed in data["statements"]:
        for rid in ids:
            sent[(kind.split("_")[0], rid)] = (start, end, len(ids), failed)
    out: dict[str, list] = collections.defaultdict(list)
    for kind, start, end, rid in data["calls"]:
        out[f"{kind}: asked → had it"].append((end - start) * 1000)
        found = sent.get((kind, rid)) if rid else None
        if found is None:
            continue
        s, e, n, _ = found
        out[f"{kind}: asked → sent"].append((s - start) * 1000)
        out[f"{kind}: sent → answered"].append((e - s) * 1000)
        out[f"{kind}: answered → had it"].append((end - e) * 1000)
        out[f"{kind}: calls in its statement"].append(n)
    for start, end, _ in data["requests"]:
        out["request: in the handler"].append((end - start) * 1000)
    return out


def waves(data: dict, gap_ms: float) -> list[dict]:
    found: list[dict] = []
    last = None
    for kind, start, _end, ids, _ in sorted(data["statements"], key=lambda s: s[1]):
        if last is None or (start - last) * 1000 > gap_ms:
            found.append(collections.defaultdict(list))
        found[-1][kind].append(len(ids))
        last = start
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dumps", nargs="+")
    parser.add_argument("--gap", type=float, default=100.0, help="ms between statements that starts a new wave")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    data = {"calls": [], "statements": [], "requests": []}
    for path in args.dumps:
        with open(path) as f:
            part = json.load(f)
        for key in data:
            data[key] += part[key]
    table = {
        name: {"n": len(v), "p50": pct(v, 50), "p90": pct(v, 90), "mean": statistics.fmean(v)}
        for name, v in sorted(steps(data).items())
    }
    kinds = collections.Counter()
    sizes = collections.defaultdict(list)
    for kind, _, _, ids, _failed in data["statements"]:
        kinds[kind] += 1
        sizes[kind].append(len(ids))
    statements = {
        k: {"statements": kinds[k], "calls": sum(sizes[k]), "size p50": pct(sizes[k], 50), "size max": max(sizes[k])}
        for k in kinds
    }
    # Each loop statement is a transaction of its own (autocommit): one commit each.
    settled = sum(1 for c in data["calls"] if c[0] == "settle")
    statements["commits"] = {
        "total": len(data["statements"]),
        "per settled call": len(data["statements"]) / settled if settled else None,
    }
    wave_list = waves(data, args.gap)
    per_wave = {
        "waves": len(wave_list),
        "statements per wave p50": pct([sum(len(v) for v in w.values()) for w in wave_list], 50),
        "calls per wave p50": pct([sum(sum(v) for v in w.values()) for w in wave_list], 50),
    }
    if args.json:
        print(json.dumps({"steps": table, "statements": statements, "waves": per_wave}))
        return
    for name, row in table.items():
        print(f"{name:34} n={row['n']:6}  p50 {row['p50']:8.2f}  p90 {row['p90']:8.2f}  mean {row['mean']:8.2f}")
    for kind, row in statements.items():
        print(f"{kind:12} {row}")
    print(per_wave)


if __name__ == "__main__":
    main()

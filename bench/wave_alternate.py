#!/usr/bin/env python3
"""The accounting timeline (bench/wavetime) of a held world's two gateways, rounds alternated:
the world started with `WAVETIME=1 PYTHONPATH=<this tree>/bench/wavetime` in its environment
(`bench/run.py --tree OTHER --cases realstream,50ms --hold 3000 > world.json`), then for each
round and target (`gateway`, `base`, order flipped each round) the serve worker records
(`kill -USR1`) during one `load.py` run and writes its dump (`kill -USR2`); the rounds' dumps of a
target are read together by bench/wavetime.py. Prints, per target, the steps and the client's p50.

  bench/wave_alternate.py world.json --case realstream -c 64 --rounds 4 --duration 8"""

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

from run import BENCH_PY, HARNESS, RESULTS

ROOT = Path(__file__).resolve().parent


def workers(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found] or [pid]


def signal_all(pids: list[int], sig: str) -> None:
    for pid in pids:
        subprocess.run(["kill", f"-{sig}", str(pid)], check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("world")
    ap.add_argument("--case", choices=["realstream", "0ms", "50ms"], default="realstream")
    ap.add_argument("-c", "--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--targets", default="gateway,base")
    args = ap.parse_args()
    world = json.loads(Path(args.world).read_text())
    upstream = {"realstream": "real", "0ms": "0", "50ms": "50"}[args.case]
    model = {"realstream": "benchreal", "0ms": "bench0", "50ms": "bench50"}[args.case] + "/gpt-4o-mini"
    names = args.targets.split(",")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dumps: dict[str, list[str]] = {n: [] for n in names}
    client: dict[str, list[dict]] = {n: [] for n in names}
    direct: list[float] = []
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            g = world["gateways"][name]
            pids = workers(g["pid"])
            cmd = [BENCH_PY, str(HARNESS / "load.py"), "--url", f"http://127.0.0.1:{g['port']}", "--key", world["key"]]
            cmd += ["--model", model, "-c", str(args.concurrency), "-d", str(args.duration), "--engine", "py"]
            cmd += ["--stream"] if args.case == "realstream" else []
            time.sleep(1)
            signal_all(pids, "USR1")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            signal_all(pids, "USR2")
            time.sleep(0.5)
            row = json.loads(out.strip().splitlines()[-1])
            row["loadavg1"] = float(Path("/proc/loadavg").read_text().split()[0])
            client[name].append(row)
            for pid in pids:
                kept = Path(f"/tmp/wavetime-{stamp}-{name}-{r}-{pid}.json")
                Path(f"/tmp/wavetime-{pid}.json").rename(kept)
                dumps[name].append(str(kept))
        thin = world["thin"][upstream]
        cmd = [BENCH_PY, str(HARNESS / "load.py"), "--url", f"http://127.0.0.1:{thin['port']}", "--key", "sk-thin"]
        cmd += ["--model", "gpt-4o-mini", "-c", str(args.concurrency), "-d", str(args.duration), "--engine", "py"]
        cmd += ["--stream"] if args.case == "realstream" else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        direct.append(json.loads(out.strip().splitlines()[-1])["p50_ms"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in names:
        steps = json.loads(
            subprocess.run(
                ["python3", str(ROOT / "wavetime.py"), "--json", *dumps[name]],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        summary = {
            "run": f"wave-{stamp}",
            "target": name,
            "case": args.case,
            "concurrency": args.concurrency,
            "p50_ms_rounds": [r["p50_ms"] for r in client[name]],
            "p50_ms_median": statistics.median(r["p50_ms"] for r in client[name]),
            "thin_p50_ms_rounds": direct,
            "rps_median": statistics.median(r["rps"] for r in client[name]),
            "loadavg1": [r["loadavg1"] for r in client[name]],
            **steps,
        }
        print(json.dumps(summary), flush=True)
        with open(RESULTS / f"wave-{stamp}.jsonl", "a") as fh:
            fh.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()

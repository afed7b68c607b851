"""Chaos benchmark: the demo stack under a seeded fault schedule, reconciled afterwards.

Runs ``retail chaos`` (:mod:`stack.chaos`) on the running demo stack, first bringing it up with
``retail demo`` if no demo-profile stack runs (three DCs of two nodes, three Kafka brokers,
supervised consumers, Airflow). The schedule mixes every fault kind over ``--duration`` seconds;
the targets are lost 0, duplicated 0, rollup buckets wrong 0, dead letters missing 0 with every
kind injected. Prints the figures (``--json``: one object, with the seconds the whole bench
took).

    python bench/chaos.py
    python bench/chaos.py --duration 600 --json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from retail.chaos import KINDS
from retail.topology import profile_topology
from stack.local import LocalStack

RETAIL = str(Path(sys.executable).with_name("retail"))
TARGETS = ("lost", "duplicated", "rollup_buckets_wrong", "dead_letters_missing")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of stream and faults")
    ap.add_argument("--rate", type=float, default=20.0, help="valid events per second")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args()
    started = time.monotonic()
    stack = LocalStack()
    if stack.saved_topology() != profile_topology("demo") or not stack.running():
        log("no demo stack runs: `retail demo` first")
        subprocess.run([RETAIL, "demo"], check=True, stdout=sys.stderr)
    log(f"retail chaos --duration {args.duration:g} --rate {args.rate:g} --seed {args.seed}")
    argv = [RETAIL, "chaos", "--json", "--seed", str(args.seed)]
    argv += ["--duration", f"{args.duration:g}", "--rate", f"{args.rate:g}"]
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        log(f"retail chaos printed no figures (exit {done.returncode})")
        return 1
    result = json.loads(lines[-1])
    result["bench_seconds"] = round(time.monotonic() - started, 1)
    every_kind = set(result["faults_by_kind"]) == set(KINDS)
    met = every_kind and all(result[t] == 0 for t in TARGETS)
    if args.json:
        print(json.dumps(result))
    else:
        for key in ("produced", "written", *TARGETS, "faults_injected", "longest_recovery_s"):
            print(f"{key:>22}: {result[key]}")
        print(f"{'every fault kind':>22}: {'yes' if every_kind else 'no'}")
    log("targets met" if met else "targets NOT met")
    return 0 if met and done.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

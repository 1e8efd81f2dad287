"""Run every benchmark in turn (``make bench``); each rewrites its own section of BENCHMARKS.md.

One after another, never in parallel: they share two CPU cores, and a neighbour would skew the ratios.

    .venv/bin/python benchmarks/run_all.py                  # defaults: about 20 minutes on 2 quiet cores
    .venv/bin/python benchmarks/run_all.py --quick          # fewer steps and questions: a smoke run
    .venv/bin/python benchmarks/run_all.py --only train --precision both
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from common import REPO_ROOT, load_average

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "cli": "bench_cli.py",
    "index": "bench_index.py",
    "train": "bench_train.py",
    "eval": "bench_eval.py",
    "retriever": "bench_retriever.py",  # about an hour: only when asked for
    "serve": "bench_serve.py",
}
DEFAULT = ["cli", "index", "train", "eval", "serve"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(SCRIPTS), default=DEFAULT)
    parser.add_argument("--precision", choices=["fp32", "bf16", "both"], default="fp32", help="for bench_train")
    parser.add_argument("--quick", action="store_true", help="train 3 steps after 1, evaluate 24 questions")
    parser.add_argument("--no_write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)

    extra: dict[str, list[str]] = {name: [] for name in SCRIPTS}
    extra["train"] = ["--precision", args.precision]
    if args.quick:
        extra["train"] += ["--steps", "3", "--warmup", "1"]
        extra["eval"] += ["--questions", "24"]
    failed = []
    began = time.perf_counter()
    for name in args.only:
        command = [sys.executable, str(HERE / SCRIPTS[name]), *extra[name], *(["--no_write"] if args.no_write else [])]
        print(f"\n=== {' '.join(command[1:])} (load {load_average()})", flush=True)
        if subprocess.run(command, cwd=REPO_ROOT).returncode != 0:
            failed.append(name)
    print(f"\nall done in {(time.perf_counter() - began) / 60:.1f} min; load {load_average()}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

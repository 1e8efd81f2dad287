"""CLI start-up: wall time of rqa's commands against TRL's equivalents and a bare interpreter.

Help and listing must stay instant however many plugins are installed (heavy libraries load inside commands
only); ``rqa train --help`` lists every TrainingArguments flag, so it is compared with ``trl sft --help``,
which does the same. Median of ``--runs`` runs each, after one unmeasured run that warms the page cache.

    .venv/bin/python benchmarks/bench_cli.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from common import (
    REPO_ROOT,
    Timer,
    load_average,
    markdown_table,
    median,
    print_table,
    ratio,
    section_preamble,
    write_section,
)

BIN = Path(sys.executable).parent
COMMANDS: dict[str, list[str]] = {
    "python -c pass (interpreter floor)": [sys.executable, "-c", "pass"],
    "rqa --help": [str(BIN / "rqa"), "--help"],
    "rqa list-plugins": [str(BIN / "rqa"), "list-plugins"],
    "rqa train --help": [str(BIN / "rqa"), "train", "--help"],
    "trl --help": [str(BIN / "trl"), "--help"],
    "trl sft --help": [str(BIN / "trl"), "sft", "--help"],
}
PAIRS = [
    ("rqa --help", "trl --help"),
    ("rqa train --help", "trl sft --help"),
    ("rqa list-plugins", "python -c pass (interpreter floor)"),
    ("rqa --help", "python -c pass (interpreter floor)"),
]


def wall_times(command: list[str], runs: int) -> list[float]:
    subprocess.run(command, capture_output=True, cwd=REPO_ROOT, check=True)  # warm-up, not measured
    times = []
    for _ in range(runs):
        with Timer() as timer:
            subprocess.run(command, capture_output=True, cwd=REPO_ROOT, check=True)
        times.append(timer.seconds)
    return times


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no_write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)

    load_before = load_average()
    results = {}
    for name, command in COMMANDS.items():
        if not Path(command[0]).exists():
            continue
        results[name] = wall_times(command, args.runs)
    columns = ["command", "median s", "min s", "max s"]
    rows = [[name, f"{median(t):.3f}", f"{min(t):.3f}", f"{max(t):.3f}"] for name, t in results.items()]
    ratio_rows = [
        [f"{mine} ÷ {other}", ratio(median(results[mine]), median(results[other]))]
        for mine, other in PAIRS
        if mine in results and other in results
    ]
    print_table(f"CLI wall time, median of {args.runs}", columns, rows)
    print_table("ratios (median)", ["", "ratio"], ratio_rows)
    if args.no_write:
        return
    body = "\n\n".join(
        [
            "## CLI start-up",
            section_preamble(load_before),
            f"Each command run {args.runs} times as a subprocess after one unmeasured run; output discarded.",
            markdown_table(columns, rows),
            markdown_table(["", "ratio"], ratio_rows),
        ]
    )
    write_section("bench_cli", body)


if __name__ == "__main__":
    main(sys.argv[1:])

"""``rqa generate`` on the Faire documents: rows per minute, the share of questions each filter removes, examples,
and whether a model trained on generated rows answers the real Faire test questions as well as one trained on gold.

Runs the real command in a fresh process for each generator: the embedded SmolLM2-135M-Instruct (``hf``) and the
same model behind ``rqa serve`` (``serve``: started here on localhost, reached through the ``openai`` backend), and
reads each ``generation.json``. The index of the database is cached under ``benchmarks/.cache``, so only the first
run pays for embedding it; rows/min counts generation time only (questions, answers, checks, hard negatives).

``--compare_training``: one epoch of ``rqa train`` (bench_quality's settings) on the ``hf`` run's generated
training rows, and the same on as many of the shipped gold Faire training rows, each evaluated end to end on the
Faire test set.

    .venv/bin/python benchmarks/bench_generate.py --num_train 20 --num_eval_test 10
    .venv/bin/python benchmarks/bench_generate.py --generators hf --num_train 120 --compare_training
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench_quality import HEADLINE, run, train_flags, train_seconds
from bench_serve import start_server
from common import (
    CACHE_DIR,
    DATA_DIR,
    REPO_ROOT,
    Timer,
    load_average,
    markdown_table,
    print_table,
    section_preamble,
    wait_for_quiet,
    write_section,
)

RQA = str(REPO_ROOT / ".venv" / "bin" / "rqa")
INDEX_DIR = CACHE_DIR / "generate-index"
GENERATORS = ("hf", "serve")
SERVE_PORT = 8766
LEARNING_RATE, MAX_SEQ_LENGTH = 1e-4, 1024  # bench_quality's SFT settings


def shorten(text: str, width: int = 110) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= width else text[: width - 1] + "…"


def generate(name: str, spec: str, args: argparse.Namespace, num_train: int) -> dict[str, Any]:
    """One ``rqa generate`` run; its generation.json with the whole command's seconds added."""
    output = CACHE_DIR / f"generate-{name}"
    shutil.rmtree(output, ignore_errors=True)
    command = [
        RQA, "generate",
        *("--documents", str(DATA_DIR / "documents.pkl"), "--output_dir", str(output)),
        *("--index", str(INDEX_DIR), "--generator", spec, "--filter", args.filter),
        *("--num_train", str(num_train), "--num_eval_test", str(args.num_eval_test)),
        *("--batch_size", str(args.batch_size), "--quiet"),
    ]  # fmt: skip
    wait_for_quiet()
    print(f"rqa generate with {spec} ...", flush=True)
    with Timer() as whole:
        subprocess.run(command, check=True, cwd=REPO_ROOT)
    data = json.loads((output / "generation.json").read_text())
    return {**data, "seconds": whole.seconds, "output": output}


def generate_through_server(args: argparse.Namespace) -> dict[str, Any]:
    """``rqa serve`` with the embedded models as the endpoint (passages are sent, so it retrieves nothing)."""
    log = CACHE_DIR / "generate-serve.log"
    server = start_server(SERVE_PORT, 256, log, DATA_DIR / "documents.pkl")
    try:
        spec = f"openai:base_url=http://127.0.0.1:{SERVE_PORT}/v1"
        return generate("serve", spec, args, args.serve_num_train or args.num_train)
    finally:
        server.terminate()
        server.wait(timeout=120)


def compare_training(generated: Path) -> list[list[str]]:
    """One epoch of SFT on the generated training rows and on as many gold rows; test-set rows of the table."""
    rows_file = generated / "train_w_qa.jsonl"
    count = len(rows_file.read_text().splitlines())
    gold = CACHE_DIR / "generate-gold-train.jsonl"
    gold.write_text("".join((DATA_DIR / "train_w_qa.jsonl").read_text().splitlines(keepends=True)[:count]))
    table = []
    for label, train_file in ((f"{count} generated rows", rows_file), (f"{count} gold Faire rows", gold)):
        output = CACHE_DIR / f"generate-sft-{train_file.stem}"
        wait_for_quiet()
        print(f"rqa train on {label} ...", flush=True)
        seconds = run(train_flags(output, CACHE_DIR / "faire-index", LEARNING_RATE, MAX_SEQ_LENGTH, [], train_file))
        metrics = json.loads((output / "test-metrics.json").read_text())
        cells = []
        for key in HEADLINE:
            low, high = metrics.get(f"ci95_low/{key}"), metrics.get(f"ci95_high/{key}")
            cells.append(f"{metrics[key]:.3f}" + (f" [{low:.3f}–{high:.3f}]" if low is not None else ""))
        minutes = train_seconds(output)
        table.append([label, *cells, f"{minutes / 60:.1f}" if minutes else "—", f"{seconds / 60:.1f}"])
    return table


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generators", nargs="+", choices=GENERATORS, default=list(GENERATORS))
    parser.add_argument("--num_train", type=int, default=20)
    parser.add_argument("--serve_num_train", type=int, help="training rows through rqa serve (default: --num_train)")
    parser.add_argument("--num_eval_test", type=int, default=10)
    parser.add_argument("--filter", default="short,roundtrip")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--compare_training", action="store_true", help="SFT on generated vs gold rows (needs hf)")
    parser.add_argument("--no_write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)

    load_before = load_average()
    runs: dict[str, dict[str, Any]] = {}
    if "hf" in args.generators:
        runs["hf"] = generate("hf", "hf", args, args.num_train)
    if "serve" in args.generators:
        runs["serve"] = generate_through_server(args)

    names = list(runs)
    columns = ["", *(f"`{name}`" for name in names)]
    counts = [
        ["rows kept (train / eval / test)",
         *(f"{sum(r['rows'].values())} ({' / '.join(str(v) for v in r['rows'].values())})" for r in runs.values())],
        ["questions asked for", *(str(r["questions_asked"]) for r in runs.values())],
        ["rows/min (generation only)", *(str(r["rows_per_minute"]) for r in runs.values())],
        ["whole command, seconds (start-up, index, model load included)",
         *(f"{r['seconds']:.0f}" for r in runs.values())],
    ]  # fmt: skip
    reasons = list(dict.fromkeys(reason for r in runs.values() for reason in r["filters"]))
    filters = [
        [reason, *(_share(r["filters"].get(reason, {}).get("removed", 0), r["questions_asked"]) for r in runs.values())]
        for reason in reasons
    ]
    surplus = [_share(r["surplus"], r["questions_asked"]) for r in runs.values()]
    filters.append(["surplus (split already full)", *surplus])
    first = runs[names[0]]
    examples = []
    for line in (first["output"] / "train_w_qa.jsonl").read_text().splitlines()[: args.examples]:
        row = json.loads(line)
        title = row["gold_docs"][0]["metadata"].get("title", "")
        examples.append([shorten(title, 40), shorten(row["question"]), shorten(row["gold_answer"], 160)])
    training = compare_training(runs["hf"]["output"]) if args.compare_training and "hf" in runs else []
    training_columns = ["trained on (1 epoch)", *HEADLINE, "training (min)", "wall time (min)"]

    print_table("rqa generate", columns, counts)
    print_table("removed by (questions, share of asked)", ["filter", *columns[1:]], filters)
    print_table(f"examples ({names[0]}, train)", ["passage title", "question", "answer"], examples)
    if training:
        print_table("Faire test set after SFT", training_columns, training)
    if args.no_write:
        return
    body = [
        "## Generating QA data: `rqa generate`",
        section_preamble(load_before),
        f"Faire documents.pkl ({first['documents']['count']} passages, {first['documents']['askable']} askable), "
        "the embedded SmolLM2-135M-Instruct locally (`hf`) and behind `rqa serve` (`serve`, through the "
        f"`openai` backend), `--filter {args.filter}`, default prompts, "
        f"{first['settings']['questions_per_passage']} questions per passage, batch {args.batch_size}.",
        markdown_table(columns, counts),
        markdown_table(["removed by: questions (share of asked)", *columns[1:]], filters),
        markdown_table(["passage title", "question", "answer"], examples),
    ]
    if training:
        body += [
            "One epoch of `rqa train` (bench_quality's settings) on the generated training rows and on as many of "
            "the shipped gold rows, each evaluated end to end on the 75 Faire test questions (95 % intervals; the "
            "untrained model's scores are in the Quality section):",
            markdown_table(training_columns, training),
        ]
    write_section("bench_generate", "\n\n".join(body))


def _share(removed: int, asked: int) -> str:
    return f"{removed} ({removed / max(asked, 1):.0%})"


if __name__ == "__main__":
    main(sys.argv[1:])

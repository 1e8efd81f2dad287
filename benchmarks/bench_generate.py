"""``rqa generate`` on the Faire documents: rows per minute, the share of questions each filter removes, examples.

Runs the real command in a fresh process with the embedded SmolLM2-135M-Instruct (``--generator hf``), or with any
backend given by ``--generator`` (``openai:base_url=http://127.0.0.1:8000/v1`` for an ``rqa serve`` endpoint), and
reads its ``generation.json``. The index of the database is cached under ``benchmarks/.cache``, so only the first
run pays for embedding it; rows/min counts generation time only (questions, answers, checks, hard negatives).

    .venv/bin/python benchmarks/bench_generate.py --num_train 20 --num_eval_test 10
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

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

OUTPUT_DIR = CACHE_DIR / "generate"
INDEX_DIR = CACHE_DIR / "generate-index"


def shorten(text: str, width: int = 110) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= width else text[: width - 1] + "…"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_train", type=int, default=20)
    parser.add_argument("--num_eval_test", type=int, default=10)
    parser.add_argument("--generator", default="hf")
    parser.add_argument("--filter", default="short,roundtrip")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--no_write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)

    load_before = load_average()
    shutil.rmtree(OUTPUT_DIR, ignore_errors=True)
    command = [
        str(REPO_ROOT / ".venv" / "bin" / "rqa"),
        "generate",
        *("--documents", str(DATA_DIR / "documents.pkl"), "--output_dir", str(OUTPUT_DIR)),
        *("--index", str(INDEX_DIR), "--generator", args.generator, "--filter", args.filter),
        *("--num_train", str(args.num_train), "--num_eval_test", str(args.num_eval_test)),
        *("--batch_size", str(args.batch_size), "--quiet"),
    ]
    wait_for_quiet()
    print(f"rqa generate with {args.generator} ...", flush=True)
    with Timer() as whole:
        subprocess.run(command, check=True, cwd=REPO_ROOT)
    data = json.loads((OUTPUT_DIR / "generation.json").read_text())

    rows = sum(data["rows"].values())
    asked = data["questions_asked"]
    counts = [
        ["rows kept (train / eval / test)", f"{rows} ({' / '.join(str(v) for v in data['rows'].values())})"],
        ["questions asked for", str(asked)],
        ["rows/min (generation only)", str(data["rows_per_minute"])],
        ["whole command, seconds (start-up, index, model load included)", f"{whole.seconds:.0f}"],
    ]
    filters = [[reason, info["removed"], f"{info['share']:.0%}"] for reason, info in data["filters"].items()]
    filters.append(["surplus (split already full)", data["surplus"], f"{data['surplus'] / max(asked, 1):.0%}"])
    examples = []
    for line in (OUTPUT_DIR / "train_w_qa.jsonl").read_text().splitlines()[: args.examples]:
        row = json.loads(line)
        title = row["gold_docs"][0]["metadata"].get("title", "")
        examples.append([shorten(title, 40), shorten(row["question"]), shorten(row["gold_answer"], 160)])

    print_table("rqa generate", ["", "value"], counts)
    print_table("removed by", ["filter", "questions", "share of asked"], filters)
    print_table("examples (train)", ["passage title", "question", "answer"], examples)
    if args.no_write:
        return
    body = "\n\n".join(
        [
            "## Generating QA data: `rqa generate`",
            section_preamble(load_before),
            f"Faire documents.pkl ({data['documents']['count']} passages, {data['documents']['askable']} askable), "
            f"generator `{args.generator}` ({data['generator']['name']}), `--filter {args.filter}`, default prompts, "
            f"{data['settings']['questions_per_passage']} questions per passage, batch {args.batch_size}.",
            markdown_table(["", "value"], counts),
            markdown_table(["removed by", "questions", "share of asked"], filters),
            markdown_table(["passage title", "question", "answer"], examples),
        ]
    )
    write_section("bench_generate", body)


if __name__ == "__main__":
    main(sys.argv[1:])

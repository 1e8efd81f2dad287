"""Quality: the embedded base model vs one epoch of rqa SFT, end to end on the Faire test set.

Each variant runs through the real CLI as a user would: `rqa evaluate` for the base model, `rqa train` (one
epoch on the 574 usable Faire training rows, then the test file predicted end to end) for SFT with gold
passages, and the same with RAFT-style contexts (gold mixed with retrieved distractors). Every variant
retrieves the top 4 of the whole 1758-item database with the embedded MiniLM and generates up to 128 tokens.

    .venv/bin/python benchmarks/bench_quality.py                 # base, gold SFT, RAFT SFT (about an hour)
    .venv/bin/python benchmarks/bench_quality.py --variants base gold
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import (
    CACHE_DIR,
    DATA_DIR,
    Timer,
    load_average,
    markdown_table,
    print_table,
    section_preamble,
    write_section,
)

RQA = str(Path(sys.executable).parent / "rqa")
HEADLINE = ("gen/f1", "gen/rougeL", "retr/recall@4")
# One epoch of TRL's SFTTrainer on this data, measured earlier on this machine type with the same base model,
# top-4 MiniLM retrieval over fmt_content and a ChatML prompt (not re-run here: it takes 43 minutes).
TRL_REFERENCE = {"gen/f1": 0.417, "gen/rougeL": 0.368, "minutes": 43.0}


def common_data_flags(index: Path) -> list[str]:
    return ["--full_dataset_file_path", str(DATA_DIR / "documents.pkl"), "--full_dataset_index_path", str(index)]


def train_flags(
    output: Path,
    index: Path,
    learning_rate: float,
    max_seq_length: int,
    extra: list[str],
    train_file: Path | None = None,
) -> list[str]:
    return [
        RQA, "train",
        "--train_file", str(train_file or DATA_DIR / "train_w_qa.jsonl"),
        "--test_file", str(DATA_DIR / "test_w_qa.jsonl"),
        *common_data_flags(index),
        "--output_dir", str(output),
        "--overwrite_output_dir", "true",
        "--num_train_epochs", "1",
        "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "32",
        "--learning_rate", str(learning_rate),
        "--eval_strategy", "no",
        "--save_strategy", "no",
        "--max_seq_length", str(max_seq_length),
        "--max_new_tokens", "128",
        *extra,
    ]  # fmt: skip


def run(command: list[str]) -> float:
    with Timer() as timer:
        completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stdout[-2000:]}{completed.stderr[-2000:]}")
    return timer.seconds


def train_seconds(output: Path) -> float | None:
    """The Trainer's own ``train_runtime`` (training steps only: no start-up, indexing or test evaluation)."""
    state = output / "trainer_state.json"
    if not state.exists():
        return None
    history = json.loads(state.read_text())["log_history"]
    return next((entry["train_runtime"] for entry in history if "train_runtime" in entry), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["base", "gold", "raft"], choices=["base", "gold", "raft"])
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument(
        "--max_seq_length", type=int, default=1024, help="longest training example and test prompt, every variant"
    )
    parser.add_argument("--no-write", dest="write", action="store_false")
    options = parser.parse_args()
    load_before = load_average()
    index = CACHE_DIR / "faire-index"
    results: dict[str, dict] = {}
    for variant in options.variants:
        output = CACHE_DIR / f"quality-{variant}"
        if variant == "base":
            seconds = run(
                [RQA, "evaluate", "--data", str(DATA_DIR / "test_w_qa.jsonl"), "--documents",
                 str(DATA_DIR / "documents.pkl"), "--index", str(index), "--output_dir", str(output),
                 "--batch_size", "32", "--max_new_tokens", "128", "--max_seq_length", str(options.max_seq_length)]
            )  # fmt: skip
            metrics = json.loads((output / "metrics.json").read_text())
        else:
            extra = ["--train_context", "raft", "--raft_source", "retriever"] if variant == "raft" else []
            seconds = run(train_flags(output, index, options.learning_rate, options.max_seq_length, extra))
            metrics = json.loads((output / "test-metrics.json").read_text())
        results[variant] = {"seconds": seconds, "metrics": metrics, "train_seconds": train_seconds(output)}
        print(f"{variant}: {seconds / 60:.1f} min, " + ", ".join(f"{k} {metrics[k]:.3f}" for k in HEADLINE))

    labels = {"base": "base SmolLM2-135M-Instruct", "gold": "rqa SFT, gold passages", "raft": "rqa SFT, RAFT contexts"}
    columns = ["variant", *HEADLINE, "training (min)", "wall time (min)"]
    rows = []
    for variant, result in results.items():
        cells = []
        for key in HEADLINE:
            low, high = result["metrics"].get(f"ci95_low/{key}"), result["metrics"].get(f"ci95_high/{key}")
            interval = f" [{low:.3f}–{high:.3f}]" if low is not None else ""
            cells.append(f"{result['metrics'][key]:.3f}{interval}")
        training = f"{result['train_seconds'] / 60:.1f}" if result["train_seconds"] else "—"
        rows.append([labels[variant], *cells, training, f"{result['seconds'] / 60:.1f}"])
    rows.append(["TRL SFTTrainer, 1 epoch (reference)", f"{TRL_REFERENCE['gen/f1']:.3f}",
                 f"{TRL_REFERENCE['gen/rougeL']:.3f}", "—", f"{TRL_REFERENCE['minutes']:.0f}", "—"])  # fmt: skip
    print_table("quality on the Faire test set (75 questions)", columns, rows)
    if options.write:
        body = "\n\n".join(
            [
                "## Quality: base model vs one epoch of SFT (Faire test set, end to end)",
                section_preamble(load_before),
                markdown_table(columns, rows),
                f"SFT settings: one epoch over the 574 usable training rows, batch 4, learning rate "
                f"{options.learning_rate:g} (cosine, 10 % warm-up), max length {options.max_seq_length} (training "
                "examples and test prompts), rqa's default packed batches, fp32. Training is the Trainer's own "
                "train_runtime; wall time adds start-up, indexing on first use and the end-to-end test evaluation; "
                "brackets are bootstrap 95 % intervals over the 75 questions. The TRL row is a reference measured "
                "earlier on this machine type with the same model, retrieval and "
                "ChatML prompt (one epoch took 43 minutes); it is not re-run by this script.",
            ]
        )
        write_section("bench_quality", body)


if __name__ == "__main__":
    main()

"""Retriever training on Faire: base MiniLM vs `rqa train-retriever` vs a plain sentence-transformers script.

Quality: every variant's model retrieves the top 4 of the whole 1758-item Faire database for each test question
through the real CLI (`rqa evaluate --retrieval_only`, or the test predictions `rqa train-retriever` writes), scored
with the same metric and 95 % bootstrap intervals. The plain script is what a user would write from
sentence-transformers' documentation: question/gold-passage pairs, in-batch negatives
(MultipleNegativesRankingLoss), batch 32, learning rate 3e-5, three epochs.

Speed: training samples/s of `rqa train-retriever` vs that plain script on the same data, batch, loss and epochs
(no hard negatives, no evaluation while training), each in its own process, one after the other.

Each variant's latest row is kept in ``benchmarks/results/bench_retriever.json`` with the run that measured it, and
the section is written from all of them: a costly variant (replug: over an hour) need not run again when another
one changes.

    .venv/bin/python benchmarks/bench_retriever.py                       # base, plain, rqa defaults, speed
    .venv/bin/python benchmarks/bench_retriever.py --variants base rqa replug
    .venv/bin/python benchmarks/bench_retriever.py --variants answers    # after `rqa`: does retrieval lift answers?

Hybrid: BM25 alone (the rqa-bm25 plugin), and the `hybrid` retriever (reciprocal-rank fusion of dense embeddings and
BM25) with the base MiniLM and with the model the `rqa` variant trained, each through `rqa evaluate --retrieval_only`;
`hybrid-mined` trains with hard negatives mined from that fusion (`--mining_retriever hybrid`) instead of the base
model's embeddings alone; `bm25-mined` mines them with BM25 alone. `inverse-cloze` adds one pseudo-question per database
passage (`--inverse_cloze 1`); `whole-passages` lets the embedder read 512 tokens of a passage instead of 256
(`--max_seq_length 512`).

Windows: `base-windows` embeds each passage longer than the base MiniLM reads as overlapping windows scored by their
best (`--retriever_option windows=true`; a model `rqa train-retriever` trains does so by default);
`rqa-no-windows` evaluates the `rqa` variant's model reading only each passage's beginning.

Answers: one epoch of gold-passage SFT (bench_quality's settings), its test set answered end to end once with the
base MiniLM and once with the retriever the `rqa` variant trained; `answers-raft` adds SFT whose RAFT contexts come
from the trained retriever (so the generator learns to read what that retriever returns); `answers-hybrid` answers
with the trained retriever fused with BM25; `answers-epochs` trains the gold-passage SFT for three epochs instead of
one and answers with the trained retriever, alone and fused with BM25.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench_quality import run as run_cli
from bench_quality import train_flags
from common import (
    CACHE_DIR,
    DATA_DIR,
    Timer,
    cpu_name,
    emit_json,
    load_average,
    markdown_table,
    ratio,
    run_child,
    section_preamble,
    wait_for_quiet,
    write_section,
)

RQA = str(Path(sys.executable).parent / "rqa")
KEYS = ("retr/recall@1", "retr/recall@4", "retr/ndcg@4", "retr/mrr")
# `rqa train-retriever` with its defaults changed by these flags, one variant each
FLAG_VARIANTS = {
    "hybrid-mined": ["--mining_retriever", "hybrid"],
    "bm25-mined": ["--mining_retriever", "bm25"],
    "inverse-cloze": ["--inverse_cloze", "1"],
    # all-MiniLM-L6-v2 reads 256 tokens of a passage; 37 % of Faire's passages are longer (none above 512)
    "whole-passages": ["--max_seq_length", "512"],
}
# the `rqa` variant's model retrieving through another retriever: (label, --retriever)
TRAINED_RETRIEVED = {
    "rqa-no-windows": (
        "`rqa train-retriever` (defaults), each passage's first 256 tokens only (`windows=false`)",
        "dense-faiss:windows=false",
    ),
    "hybrid-trained": ("`hybrid`: `rqa train-retriever` (defaults) + BM25, reciprocal-rank fusion", "hybrid"),
}
VARIANTS = ("base", "base-windows", "bm25", "hybrid", "plain", "rqa", "rqa-no-windows", "hybrid-trained",
            *FLAG_VARIANTS, "replug", "speed", "answers", "answers-hybrid", "answers-raft",
            "answers-epochs")  # fmt: skip
ANSWER_KEYS = (
    "retr/recall@4",
    "gen/f1",
    "gen/rougeL",
    "gen/f1_retrieved",
    "gen/f1|retrieval_hit",
    "gen/f1|retrieval_miss",
)
DOCUMENTS = str(DATA_DIR / "documents.pkl")
RESULTS = Path(__file__).parent / "results" / "bench_retriever.json"  # every variant's latest row, with its run
ANSWER_ROWS = ("sft-base", "sft-trained", "sft-hybrid-trained", "raft-trained", "sft-epochs-trained",
               "sft-epochs-hybrid-trained")  # fmt: skip
ANSWER_EPOCHS = 3  # answers-epochs: passes of gold-passage SFT
PLAIN = {"batch": 32, "learning_rate": 3e-5, "epochs": 3}
# one epoch of 8-question batches: each step scores 8 x 4 passages with the generator (the costly part on a CPU)
REPLUG_FLAGS = ["--loss", "replug", "--num_docs", "4", "--refresh_steps", "24", "--per_device_train_batch_size", "8",
                "--num_train_epochs", "1"]  # fmt: skip


def plain_script(output: str, epochs: float, max_rows: int | None = None) -> None:
    """The child: a plain sentence-transformers fine-tuning script, as its documentation shows one."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from rqa.models import resolve_embedder
    from rqa.schema import read_examples

    examples = read_examples(DATA_DIR / "train_w_qa.jsonl")[:max_rows]
    pairs = {"anchor": [e.question for e in examples], "positive": [e.gold_docs[0].text for e in examples]}
    model = SentenceTransformer(resolve_embedder(None))
    args = SentenceTransformerTrainingArguments(
        output_dir=output, num_train_epochs=epochs, per_device_train_batch_size=PLAIN["batch"],
        learning_rate=PLAIN["learning_rate"], save_strategy="no", report_to="none", disable_tqdm=True,
        logging_steps=10,
    )  # fmt: skip
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict(pairs), loss=MultipleNegativesRankingLoss(model)
    )
    with Timer() as timer:
        trainer.train()
    model.save(output)
    emit_json({"samples_per_s": len(examples) * epochs / timer.seconds, "seconds": timer.seconds})


def evaluate_retrieval(model: str, output: Path, retriever: str = "dense-faiss") -> dict[str, float]:
    """`rqa evaluate --retrieval_only` on the Faire test set with ``model`` as the embedder of ``retriever``."""
    command = [
        RQA, "evaluate", "--retrieval_only", "--data", str(DATA_DIR / "test_w_qa.jsonl"), "--documents", DOCUMENTS,
        "--index", str(output / "index"), "--output_dir", str(output), "--retriever", retriever,
        *(["--embedding_model", model] if model else []),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads((output / "metrics.json").read_text())


def train_retriever(output: Path, extra: list[str]) -> tuple[dict[str, float], dict[str, Any], float]:
    """`rqa train-retriever` with its defaults plus ``extra``; (test metrics, last trainer log entry, seconds)."""
    command = [
        RQA, "train-retriever", "--train_file", str(DATA_DIR / "train_w_qa.jsonl"),
        "--eval_file", str(DATA_DIR / "eval_w_qa.jsonl"), "--test_file", str(DATA_DIR / "test_w_qa.jsonl"),
        "--full_dataset_file_path", DOCUMENTS, "--output_dir", str(output), "--overwrite_output_dir", "true",
        "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", *extra,
    ]  # fmt: skip
    with Timer() as timer:
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"rqa train-retriever failed:\n{done.stderr[-3000:]}")
    state = json.loads((output / "trainer_state.json").read_text())
    summary = next(e for e in reversed(state["log_history"]) if "train_runtime" in e)
    return json.loads((output / "test-metrics.json").read_text()), summary, timer.seconds


def answer_rows(work: Path, variants: list[str], reuse_generator: bool, bf16: bool) -> dict[str, dict[str, Any]]:
    """Generator SFT answering the Faire test set: ``answers`` gold SFT with the base retriever and with the one
    ``rqa`` trained; ``answers-raft`` SFT whose RAFT contexts come from that trained retriever; ``answers-epochs``
    gold SFT for ``ANSWER_EPOCHS`` epochs, answering with the trained retriever alone and fused with BM25. Keyed
    rows.

    ``reuse_generator`` keeps an earlier run's gold SFT (it does not depend on the retriever), so a newly trained
    retriever is compared in minutes instead of another SFT; ``answers-epochs`` keeps its own likewise. ``bf16``
    trains the generators in mixed bf16 (fp32 weights), the faster setting on a CPU with bf16 instructions; answers
    are generated by ``rqa evaluate`` in fp32, but for ``answers-raft``'s, which its training run generates (under
    bf16 autocast when it trained so).
    """
    precision = ["--bf16", "true"] if bf16 else []
    trained = work / "rqa"
    if not (trained / "modules.json").exists():
        raise SystemExit(f"{trained} holds no trained retriever: run --variants rqa first")
    test_data = str(DATA_DIR / "test_w_qa.jsonl")
    rows: dict[str, dict[str, Any]] = {}

    def row(generator: str, retriever: str, scores: dict[str, float]) -> dict[str, Any]:
        trained_in = "bf16 (mixed)" if bf16 else "fp32"
        return {"cells": [generator, retriever, *answer_cells(scores)], "trained_in": trained_in, "run": run_stamp()}

    def answered_with_trained(model: Path, output: Path, retriever_flags: list[str]) -> dict[str, float]:
        """``model`` answering the test set through ``rqa evaluate`` with the trained embedder; its metrics."""
        run_cli([RQA, "evaluate", "--model", str(model), "--data", test_data, "--documents", DOCUMENTS,
                 *retriever_flags, "--embedding_model", str(trained), "--output_dir", str(output)])  # fmt: skip
        return json.loads((output / "metrics.json").read_text())

    trained_index = ["--index", str(work / "answers-trained-index")]
    hybrid_index = ["--index", str(work / "answers-hybrid-index"), "--retriever", "hybrid"]

    if "answers" in variants:
        sft = work / "answers-sft"
        if not (reuse_generator and (sft / "test-metrics.json").exists()):
            run_cli(train_flags(sft, CACHE_DIR / "faire-index", 1e-4, 1024, precision))
        rows["sft-base"] = row("gold SFT", "base MiniLM", json.loads((sft / "test-metrics.json").read_text()))
        scores = answered_with_trained(sft, work / "answers-sft-trained", trained_index)
        rows["sft-trained"] = row("gold SFT", "trained (`rqa` variant)", scores)
    if "answers-hybrid" in variants:
        sft = work / "answers-sft"
        if not (sft / "test-metrics.json").exists():
            raise SystemExit(f"{sft} holds no gold SFT: run --variants answers first")
        scores = answered_with_trained(sft, work / "answers-sft-hybrid-trained", hybrid_index)
        rows["sft-hybrid-trained"] = row("gold SFT", "`hybrid`: trained (`rqa` variant) + BM25", scores)
    if "answers-raft" in variants:
        raft = work / "answers-raft"
        extra = [*precision, "--train_context", "raft", "--raft_source", "retriever", "--eval_embedding_model",
                 str(trained)]  # fmt: skip
        run_cli(train_flags(raft, work / "answers-trained-index", 1e-4, 1024, extra))
        scores = json.loads((raft / "test-metrics.json").read_text())
        rows["raft-trained"] = row("RAFT SFT, contexts from the trained retriever", "trained (`rqa` variant)", scores)
    if "answers-epochs" in variants:
        longer = work / "answers-sft-epochs"
        if not (reuse_generator and (longer / "model.safetensors").exists()):
            run_cli(train_flags(longer, CACHE_DIR / "faire-index", 1e-4, 1024,
                                [*precision, "--num_train_epochs", str(ANSWER_EPOCHS)]))  # fmt: skip
        retrievers = {  # row key: (label, the index and retriever flags)
            "sft-epochs-trained": ("trained (`rqa` variant)", trained_index),
            "sft-epochs-hybrid-trained": ("`hybrid`: trained (`rqa` variant) + BM25", hybrid_index),
        }
        for key, (label, flags) in retrievers.items():
            scores = answered_with_trained(longer, work / f"answers-{key}", flags)
            rows[key] = row(f"gold SFT, {ANSWER_EPOCHS} epochs", label, scores)
    return rows


def load_results() -> dict[str, Any]:
    """The stored rows (``RESULTS``): every variant's latest, with the run that measured it."""
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def save_results(stored: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(stored, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def merge_quality(
    stored: dict[str, Any], quality: dict[str, tuple[str, dict[str, float], str]], speed: dict[str, float] | None
) -> None:
    """This run's rows into the stored ones: a variant run again replaces its own row, the others keep theirs with
    the run that made them, so one costly variant can be re-measured alone."""
    rows, run = stored.setdefault("quality", {}), run_stamp()
    for variant, (label, scores, seconds) in quality.items():
        kept = {k: scores[k] for key in KEYS for k in (key, f"ci95_low/{key}", f"ci95_high/{key}") if k in scores}
        rows[variant] = {"label": label, "scores": kept, "seconds": seconds, "run": run}
    if speed is not None:
        stored["speed"] = {"plain": speed["plain"], "rqa": speed["rqa"], "run": run}


def run_stamp() -> str:
    """When and where a row was measured: its date and CPU."""
    return f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {cpu_name()}"


def retriever_section(load_before: str, results: dict[str, Any]) -> str:
    """The retrieval table (every stored variant, in ``VARIANTS`` order, each with its run) and the speed table."""
    columns = ["test set, top 4 of 1758 passages", *KEYS, "training s", "run"]
    stored = results.get("quality", {})
    rows = [
        [row["label"], *(cell(row["scores"], k) for k in KEYS), row["seconds"], row["run"]]
        for row in (stored[v] for v in VARIANTS if v in stored)
    ]
    body = [
        f"## Retriever training (Faire test set)\n\n{section_preamble(load_before)}\n",
        markdown_table(columns, rows) + "\n\n95 % bootstrap intervals in brackets; 75 test questions. Seconds: "
        "the plain script's `trainer.train()` alone; rqa's whole command (loading, mining, the evaluations while "
        "training, the test predictions). Each row keeps the run that measured it (`run`): a variant "
        "measured again replaces only its own row (`benchmarks/results/bench_retriever.json`). The `speed` variant "
        "compares training alone.",
    ]
    if speed := results.get("speed"):
        plain, rqa = speed["plain"], speed["rqa"]
        speed_rows = [["plain sentence-transformers script", f"{plain:.1f}", "1.00×"],
                      ["`rqa train-retriever`", f"{rqa:.1f}", ratio(rqa, plain)]]  # fmt: skip
        body.append(
            f"\nTraining speed, same data, batch 32, loss and epochs, no evaluation (run {speed['run']}):\n\n"
            + markdown_table(["", "samples/s", "vs plain"], speed_rows)
        )
    return "\n".join(body)


def answers_section(load_before: str, answers: dict[str, dict[str, Any]]) -> str:
    columns = ["generator", "retriever", *ANSWER_KEYS, "trained in", "run"]
    rows = [[*r["cells"], r["trained_in"], r["run"]] for r in (answers[k] for k in ANSWER_ROWS if k in answers)]
    notes = (
        "Generator: the embedded SmolLM2-135M-Instruct after one epoch of `rqa train` (three where the row says so; "
        "bench_quality's settings: batch 4, learning rate 1e-4, max length 1024; trained in fp32 or mixed bf16 with "
        "fp32 weights; answers generated in fp32 by `rqa evaluate`, the RAFT row's by its training run, under bf16 "
        "autocast); top 4 of the 1758-passage database; 128 new tokens; 75 test questions, 95 % bootstrap "
        "intervals in brackets. `gen/f1_retrieved`: token F1 of the answer against the best-matching retrieved "
        "passage (how much it reads them); `gen/f1|retrieval_hit` / `…_miss`: F1 on the questions whose gold passage "
        "was / was not retrieved. Each row keeps the run that measured it (`run`), as above."
    )
    title = "## Does a trained retriever lift answers? (Faire test set, end to end)"
    return "\n\n".join([title, section_preamble(load_before), markdown_table(columns, rows), notes])


def answer_cells(scores: dict[str, float]) -> list[str]:
    return [cell(scores, key) for key in ANSWER_KEYS]


def cell(scores: dict[str, float], key: str) -> str:
    low, high = scores.get(f"ci95_low/{key}"), scores.get(f"ci95_high/{key}")
    value = f"{scores[key]:.3f}"
    return f"{value} [{low:.2f}, {high:.2f}]" if low is not None and high is not None else value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["base", "plain", "rqa", "speed"])
    parser.add_argument("--epochs", type=float, default=PLAIN["epochs"], help="of the plain script and the speed runs")
    parser.add_argument("--no_write", action="store_true")
    parser.add_argument("--reuse_generator", action="store_true", help="answers(-epochs): keep an earlier run's SFT")
    parser.add_argument("--bf16", action="store_true", help="answers: train the generators in mixed bf16")
    parser.add_argument("--child_plain", help=argparse.SUPPRESS)
    parser.add_argument("--child_rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_plain:
        plain_script(args.child_plain, args.epochs, args.child_rows)
        return 0

    work = CACHE_DIR / "retriever"
    work.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
    quality: dict[str, tuple[str, dict[str, float], str]] = {}
    speed: dict[str, float] = {}
    if "base" in args.variants:
        wait_for_quiet()
        quality["base"] = ("base all-MiniLM-L6-v2", evaluate_retrieval("", work / "base"), "—")
    if "base-windows" in args.variants:
        wait_for_quiet()
        label = "base all-MiniLM-L6-v2, long passages as windows (`--retriever_option windows=true`)"
        scores = evaluate_retrieval("", work / "base-windows", "dense-faiss:windows=true")
        quality["base-windows"] = (label, scores, "—")
    if "bm25" in args.variants:
        wait_for_quiet()
        quality["bm25"] = ("BM25 (rqa-bm25 plugin)", evaluate_retrieval("", work / "bm25", "bm25"), "—")
    if "hybrid" in args.variants:
        wait_for_quiet()
        label = "`hybrid`: base all-MiniLM-L6-v2 + BM25, reciprocal-rank fusion"
        quality["hybrid"] = (label, evaluate_retrieval("", work / "hybrid", "hybrid"), "—")
    if "plain" in args.variants:
        wait_for_quiet()
        result = run_child([__file__, "--child_plain", str(work / "plain"), "--epochs", str(args.epochs)])
        speed["plain"] = result["samples_per_s"]
        label = f"plain script: in-batch negatives, batch 32, lr 3e-5, {args.epochs:g} epochs"
        scores = evaluate_retrieval(str(work / "plain"), work / "plain-eval")
        quality["plain"] = (label, scores, f"{result['seconds']:.0f}")
    if "rqa" in args.variants:
        wait_for_quiet()
        scores, _, seconds = train_retriever(work / "rqa", [])
        quality["rqa"] = ("`rqa train-retriever` (defaults)", scores, f"{seconds:.0f}")
    for variant in (v for v in TRAINED_RETRIEVED if v in args.variants):
        if not (work / "rqa" / "modules.json").exists():
            raise SystemExit(f"{work / 'rqa'} holds no trained retriever: run --variants rqa first")
        wait_for_quiet()
        label, retriever = TRAINED_RETRIEVED[variant]
        scores = evaluate_retrieval(str(work / "rqa"), work / variant, retriever)
        quality[variant] = (label, scores, quality.get("rqa", ("", {}, "—"))[2])
    for variant in (v for v in FLAG_VARIANTS if v in args.variants):
        wait_for_quiet()
        scores, _, seconds = train_retriever(work / variant, FLAG_VARIANTS[variant])
        quality[variant] = (f"`rqa train-retriever {' '.join(FLAG_VARIANTS[variant])}`", scores, f"{seconds:.0f}")
    if "replug" in args.variants:
        wait_for_quiet()
        scores, _, seconds = train_retriever(work / "replug", REPLUG_FLAGS)
        quality["replug"] = ("`rqa train-retriever " + " ".join(REPLUG_FLAGS) + "`", scores, f"{seconds:.0f}")
    if "speed" in args.variants:
        wait_for_quiet()
        same = ["--hard_neg_ratio", "0", "--mine_hard_negatives", "0", "--per_device_train_batch_size", "32",
                "--learning_rate", "3e-5", "--num_train_epochs", str(args.epochs), "--eval_strategy", "no",
                "--eval_on_start", "false", "--warmup_steps", "0", "--temperature", "0.05"]  # fmt: skip
        _, summary, _ = train_retriever(work / "speed", same)
        speed["rqa"] = summary["train_samples_per_second"]

    stored = load_results()
    if quality or len(speed) == 2:
        merge_quality(stored, quality, speed if len(speed) == 2 else None)
        section = retriever_section(load_before, stored)
        print(section)
        if not args.no_write:
            save_results(stored)
            write_section("bench_retriever", section)
    if {"answers", "answers-hybrid", "answers-raft", "answers-epochs"} & set(args.variants):
        wait_for_quiet()
        load_before = load_average()
        answers = stored.setdefault("answers", {})
        answers.update(answer_rows(work, args.variants, args.reuse_generator, args.bf16))
        section = answers_section(load_before, answers)
        print(section)
        if not args.no_write:
            save_results(stored)
            write_section("bench_retriever:answers", section)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The real CLI, end to end, with the embedded models (a tiny generator where answers do not matter): train,
evaluate, index."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CONTRACT_METRICS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "example"
FAIRE = ROOT.parent / "shared" / "data" / "faire"
RQA = str(Path(sys.executable).parent / "rqa")
ROW_FIELDS = {"question", "gold_answer", "generated_answer", "gold_docs", "retrieved_docs"}

pytestmark = pytest.mark.slow


def rqa(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    result = subprocess.run([RQA, *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def head(source: Path, target: Path, rows: int) -> Path:
    target.write_text("".join(source.read_text().splitlines(keepends=True)[:rows]))
    return target


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_train_overfits_one_batch_and_writes_every_output(tmp_path: Path) -> None:
    train = head(EXAMPLE / "train_w_qa.jsonl", tmp_path / "train.jsonl", 2)
    output = tmp_path / "run"
    result = rqa(
        "train",
        "--train_file", str(train),
        "--eval_file", str(head(EXAMPLE / "eval_w_qa.jsonl", tmp_path / "eval.jsonl", 2)),
        "--test_file", str(head(EXAMPLE / "test_w_qa.jsonl", tmp_path / "test.jsonl", 2)),
        "--full-dataset-file-path", str(EXAMPLE / "documents.jsonl"),
        "--output_dir", str(output),
        "--max_steps", "4",
        "--per_device_train_batch_size", "2",
        "--learning_rate", "3e-4",
        "--warmup_steps", "0",
        "--lr_scheduler_type", "constant",
        "--logging_steps", "1",
        "--eval_steps", "2",
        "--save_steps", "2",
        "--max_new_tokens", "16",
        "--max_seq_length", "512",
    )  # fmt: skip
    assert str(output / "test-metrics.json") in result.stdout

    state = json.loads((output / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 4 and losses[-1] < 0.5 * losses[0], losses
    assert any("eval_gen/f1" in entry for entry in state["log_history"])

    for step in (2, 4):
        assert set(json.loads((output / "eval" / f"step-{step}-metrics.json").read_text())) >= CONTRACT_METRICS
        assert len(read_jsonl(output / "eval" / f"step-{step}-predictions.jsonl")) == 2
    assert set(json.loads((output / "test-metrics.json").read_text())) >= CONTRACT_METRICS
    rows = read_jsonl(output / "test-predictions.jsonl")
    assert len(rows) == 2 and all(set(row) >= ROW_FIELDS for row in rows)
    assert all(len(row["retrieved_docs"]) == 4 for row in rows)
    assert (output / "checkpoint-2").is_dir() and (output / "checkpoint-4").is_dir()
    assert (output / "report.png").stat().st_size > 10_000

    resolved = json.loads((output / "rqa_args.json").read_text())
    assert resolved["resolved_formatter"]["name"] == "auto" and resolved["per_device_train_batch_size"] == 2

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(output)
    assert model.config.model_type == "llama"


def faire_sample(target: Path, questions: Path, every: int = 8) -> Path:
    """Faire's database cut to the questions' gold passages and every ``every``-th other passage: real passages
    to retrieve from, in an eighth of the time that embedding all 1,705 takes on two cores."""
    from rqa.files import write_jsonl_atomic
    from rqa.schema import read_documents, read_examples

    gold = {doc.page_content for example in read_examples(questions) for doc in example.gold_docs}
    documents = read_documents(FAIRE / "documents.pkl")
    kept = [doc for number, doc in enumerate(documents) if doc.page_content in gold or number % every == 0]
    write_jsonl_atomic(target, (doc.to_dict() for doc in kept))
    return target


def test_evaluate_on_faire_writes_predictions_and_every_metric(tmp_path: Path) -> None:
    if not FAIRE.exists():
        pytest.skip("the Faire data is not available")
    data = head(FAIRE / "test_w_qa.jsonl", tmp_path / "test.jsonl", 6)
    documents, index = faire_sample(tmp_path / "documents.jsonl", data), tmp_path / "index"
    common = ["--data", str(data), "--documents", str(documents), "--index", str(index)]
    rqa("evaluate", *common, "--output_dir", str(tmp_path / "out"), "--max_new_tokens", "48")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics) >= CONTRACT_METRICS
    assert metrics["retr/recall@4"] > 0.3 and metrics["gen/f1"] > 0.05
    rows = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    assert len(rows) == 6 and all(set(row) >= ROW_FIELDS and row["generated_answer"] for row in rows)
    assert (index / "manifest.json").exists()

    # the index is reused on the next run; --check confirms it matches
    result = rqa("index", "--documents", str(documents), "--index", str(index), "--check")
    assert "reused" in result.stdout


def test_train_with_the_bm25_plugin_retriever(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A retriever from an installed plugin package, chosen by name; what it retrieves does not depend on the
    generator, so a tiny one answers."""
    pytest.importorskip("rqa_bm25")
    output = tmp_path / "run"
    rqa(
        "train",
        "--model_name_or_path", str(tiny_model_dir),
        "--train_file", str(head(EXAMPLE / "train_w_qa.jsonl", tmp_path / "train.jsonl", 4)),
        "--test_file", str(head(EXAMPLE / "test_w_qa.jsonl", tmp_path / "test.jsonl", 3)),
        "--full_dataset_file_path", str(EXAMPLE / "documents.jsonl"),
        "--retriever", "bm25",
        "--retriever_option", "k1=1.2",
        "--output_dir", str(output),
        "--max_steps", "1",
        "--max_new_tokens", "8",
        "--metrics", "retrieval", "token-f1",
    )  # fmt: skip
    metrics = json.loads((output / "test-metrics.json").read_text())
    assert metrics["retr/recall@4"] >= 2 / 3
    manifest = json.loads((output / "index" / "manifest.json").read_text())
    assert manifest["retriever"] == "bm25"

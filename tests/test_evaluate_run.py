"""``rqa evaluate --model RUN`` takes every setting from the run's ``rqa_args.json``; flags given override them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import embedded_tokenizer, example, tiny_model

from rqa.assembly import database_and_index as _database_and_index
from rqa.errors import RqaError
from rqa.pipeline import ComponentChoice
from rqa.runs import RunRecord, component, read_run, setting

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "example"
RQA = str(Path(sys.executable).parent / "rqa")
RUN_METRICS = ["retrieval", "token-f1", "rouge", "grounding", "latency"]  # not 'all': the run's list must carry over


def rqa(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([RQA, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def timings(key: str) -> bool:
    return key.startswith("latency/") or "/latency/" in key


@pytest.fixture(scope="module")
def prompt_sensitive_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with large weights: its greedy answers change with the prompt, so a prompt built
    with other settings shows in the predictions (the usual tiny model answers every prompt alike)."""
    tokenizer = embedded_tokenizer()
    model = tiny_model(tokenizer, initializer_range=0.5)
    directory = tmp_path_factory.mktemp("prompt-sensitive-model")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def trained_run(prompt_sensitive_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run trained through the real CLI with non-default evaluation settings; returns (run, its test file)."""
    work = tmp_path_factory.mktemp("evaluate-run")
    train = work / "train.jsonl"
    train.write_text("".join((EXAMPLE / "train_w_qa.jsonl").read_text().splitlines(keepends=True)[:8]))
    test = work / "test.jsonl"
    test.write_text("".join((EXAMPLE / "test_w_qa.jsonl").read_text().splitlines(keepends=True)[:6]))
    run = work / "run"
    rqa(
        "train",
        "--config", str(EXAMPLE / "config.yaml"),
        "--model_name_or_path", str(prompt_sensitive_model),
        "--train_file", str(train),
        "--eval_file", "",
        "--test_file", str(test),
        "--full_dataset_file_path", str(EXAMPLE / "documents.jsonl"),
        "--full_dataset_index_path", "",
        "--output_dir", str(run),
        "--max_steps", "2",
        "--per_device_train_batch_size", "2",
        "--per_device_eval_batch_size", "4",
        "--max_seq_length", "768",
        "--top_k", "3",
        "--max_new_tokens", "6",
        "--formatter", "prefixes",
        "--formatter_option", "user_prefix=Question",
        "--retriever_option", "batch_size=16",
        "--metrics", *RUN_METRICS,
    )  # fmt: skip
    assert (run / "test-metrics.json").is_file() and (run / "index" / "manifest.json").is_file()
    return run, test


@pytest.mark.slow  # real CLI runs end to end
def test_evaluating_a_run_with_no_flags_reproduces_its_test_metrics(trained_run: tuple[Path, Path], tmp_path: Path):
    run, test = trained_run
    result = rqa("evaluate", "--model", str(run), "--data", str(test), "--output_dir", str(tmp_path / "out"))
    assert "reused" in result.stdout + result.stderr  # the run's index, for the run's database
    expected = json.loads((run / "test-metrics.json").read_text())
    got = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "retr/recall@3" in got and "gen/rouge1" in got and "gen/bleu" not in got  # the run's top_k and metrics
    assert set(got) == set(expected)
    assert {k: v for k, v in got.items() if not timings(k)} == {k: v for k, v in expected.items() if not timings(k)}
    rows = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    expected_rows = read_jsonl(run / "test-predictions.jsonl")
    assert [r["generated_answer"] for r in rows] == [r["generated_answer"] for r in expected_rows]
    assert [r["retrieved_docs"] for r in rows] == [r["retrieved_docs"] for r in expected_rows]


@pytest.mark.slow  # real CLI runs end to end
def test_flags_given_override_the_run(trained_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, test = trained_run
    rqa(
        "evaluate", "--model", str(run), "--data", str(test), "--output_dir", str(tmp_path / "out"),
        "--top_k", "2", "--metrics", "retrieval,token-f1", "--limit", "2", "--max_new_tokens", "1",
    )  # fmt: skip
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert {"retr/recall@2", "retr/ndcg@2", "gen/f1"} <= set(metrics)
    assert not any(k.endswith("@3") or k.startswith(("gen/rouge", "latency/")) for k in metrics)
    rows = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    assert len(rows) == 2 and all(len(row["retrieved_docs"]) == 2 for row in rows)
    assert all(len(row["generated_answer"].split()) <= 1 for row in rows)  # one new token at most


@pytest.mark.slow  # real CLI runs end to end
def test_retrieval_only_on_a_run(trained_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, test = trained_run
    result = rqa("evaluate", "--model", str(run), "--data", str(test), "--output_dir", str(tmp_path / "out"),
                 "--retrieval_only")  # fmt: skip
    assert "reused" in result.stdout + result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    expected = json.loads((run / "test-metrics.json").read_text())
    assert {k for k in metrics if k.startswith("retr/")} == {k for k in expected if k.startswith("retr/")}
    assert all(metrics[k] == expected[k] for k in metrics if k.startswith("retr/"))
    assert not any(k.startswith("gen/") for k in metrics)


# --- the reader and the precedence rules, without a model ---


def write_args(directory: Path, content: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "rqa_args.json").write_text(content)
    return directory


def test_read_run_types_the_settings(tmp_path: Path) -> None:
    saved = {
        "resolved_formatter": {"name": "prefixes", "options": {"user_prefix": "Q"}},
        "resolved_retriever": {"name": "dense-faiss", "options": {}},
        "resolved_metrics": ["retrieval", "token-f1"],
        "eval_embedding_model": None,
        "top_k": 3,
        "max_new_tokens": 6,
        "max_seq_length": 768,
        "per_device_eval_batch_size": 4,
        "use_flash_attention": False,
        "full_dataset_file_path": "docs.jsonl",
        "full_dataset_index_path": None,
        "train_file": "train.jsonl",
        "eval_file": None,
        "test_file": "test.jsonl",
        "learning_rate": 1e-5,
    }
    run = read_run(str(write_args(tmp_path / "run", json.dumps(saved))))
    assert run == RunRecord(
        directory=tmp_path / "run",
        arguments={k: v for k, v in saved.items() if not k.startswith("resolved_")},
        formatter=ComponentChoice("formatters", "prefixes", {"user_prefix": "Q"}),
        retriever=ComponentChoice("retrievers", "dense-faiss", {}),
        metrics=["retrieval", "token-f1"],
    )
    typed = ("top_k", "max_new_tokens", "max_seq_length", "eval_batch_size", "use_flash_attention", "documents")
    assert [getattr(run, name) for name in typed] == [3, 6, 768, 4, False, "docs.jsonl"]
    assert run.qa_files == ("train.jsonl", "test.jsonl") and run.embedding_model is None and run.index is None
    assert run.index_for("docs.jsonl") == str(tmp_path / "run" / "index")
    assert run.index_for("other.jsonl") is None  # another database is never indexed over the run's index
    assert read_run(None) is None and read_run("HuggingFaceTB/SmolLM2-135M") is None
    assert read_run(str(tmp_path)) is None  # a directory without rqa_args.json: a plain model


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"top_k": 3,', "cannot be read as JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"top_k": "three"}', "'top_k' should be an integer, got 'three'"),
        ('{"resolved_formatter": "chatml"}', "'resolved_formatter' should be"),
        ('{"resolved_metrics": "all"}', "'resolved_metrics' should be a list of names"),
    ],
)
def test_a_broken_file_is_an_error_naming_it(tmp_path: Path, content: str, message: str) -> None:
    run = write_args(tmp_path / "run", content)
    with pytest.raises(RqaError, match=re.escape(f"{run / 'rqa_args.json'}: ") + ".*" + re.escape(message)):
        read_run(str(run))


@pytest.mark.parametrize("command", ["evaluate", "ask"])
def test_commands_report_a_broken_file_in_one_line(tmp_path: Path, command: str) -> None:
    run = write_args(tmp_path / "run", "{not json")
    extra = ["--data", str(EXAMPLE / "test_w_qa.jsonl"), "--output_dir", str(tmp_path / "out")]
    args = ["evaluate", "--model", str(run), *extra] if command == "evaluate" else ["ask", "why?", "--model", str(run)]
    result = rqa(*args, ok=False)
    assert result.returncode != 0
    assert f"{run / 'rqa_args.json'}: cannot be read as JSON" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_given_values_win_then_the_run_then_the_default() -> None:
    assert setting(2, 3, 4) == 2 and setting(None, 3, 4) == 3 and setting(None, None, 4) == 4
    assert setting(0, 3, 4) == 0  # a given zero is a value, not a gap
    saved = ComponentChoice("formatters", "prefixes", {"user_prefix": "Q"})
    assert component(None, saved, "auto") == ("prefixes", {"user_prefix": "Q"})
    assert component("prefixes:sep_user=;", saved, "auto") == ("prefixes:sep_user=;", {"user_prefix": "Q"})
    assert component("chatml", saved, "auto") == ("chatml", {})  # the run's options belong to its formatter
    assert component(None, None, "auto") == ("auto", {})


def test_database_and_index_never_index_other_passages_over_the_run(tmp_path: Path) -> None:
    run = RunRecord(directory=tmp_path / "run", arguments={"train_file": "train.jsonl"})
    own = [example(passages=("Own passage.",))]
    data = [example(passages=("Data passage.",))]
    documents, index = _database_and_index(None, None, run, own, data)
    assert [d.page_content for d in documents] == ["Own passage."] and index == str(tmp_path / "run" / "index")
    documents, index = _database_and_index(None, None, run, None, data)  # the run's QA files have moved
    assert [d.page_content for d in documents] == ["Data passage."] and index is None
    assert _database_and_index(None, "mine", run, None, data)[1] == "mine"
    database = str(EXAMPLE / "documents.jsonl")
    paths = {"full_dataset_file_path": database, "full_dataset_index_path": str(tmp_path / "idx")}
    with_database = RunRecord(directory=tmp_path / "run", arguments=paths)
    assert _database_and_index(database, None, with_database, None, data)[1] == str(tmp_path / "idx")
    assert _database_and_index(database, None, None, None, data)[1] is None

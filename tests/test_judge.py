"""The ``judge`` metric: verdict parsing, opt-in under ``--metrics all``, and grading through a real endpoint."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from serve_helpers import KEY, KEY_ENV, MAX_NEW_TOKENS, shared_server

from rqa import contracts
from rqa.builtin.judge import parse_verdict
from rqa.cli import cli
from rqa.pipeline import metric_names
from rqa.plugins import load_plugins


@pytest.mark.parametrize(
    ("reply", "grade", "reason"),
    [
        ("Grade: 4\nReason: Correct but misses the timer.", 4, "Correct but misses the timer."),
        ("**Grade**: 2 - the answer contradicts the passage", 2, "the answer contradicts the passage"),
        ("5. Fully supported.", 5, "Fully supported"),
        ("I cannot grade this answer.", None, "I cannot grade this answer."),
        ("Grade: 9 out of 10", None, "Grade: 9 out of 10"),
    ],
)
def test_verdicts_are_parsed_and_an_unparseable_one_is_kept(reply, grade, reason):
    verdict = parse_verdict(reply)
    assert verdict["grade"] == grade and verdict["reason"] == reason and verdict["reply"] == reply


def test_all_leaves_the_judge_out_and_it_builds_without_an_endpoint(monkeypatch):
    monkeypatch.delenv("RQA_JUDGE", raising=False)
    assert "judge" not in metric_names(["all"])
    assert "judge" in metric_names(["judge"])
    judge = load_plugins()["metrics"].build("judge", top_k=3)
    assert contracts.missing("metrics", judge) == [] and isinstance(judge, contracts.SupportsPerRow)
    judge.update([])  # nothing to grade: no endpoint needed
    assert judge.compute() == {"count/judge_unparsed": 0.0}


def test_the_judge_without_an_endpoint_is_a_configuration_error(tmp_path, monkeypatch):
    monkeypatch.delenv("RQA_JUDGE", raising=False)
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "Q?", "gold_answer": "A", "gold_docs": [{"page_content": "P"}]}) + "\n")
    args = ["evaluate", "--data", str(qa), "--metrics", "judge", "--output_dir", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert "the judge metric needs a generator: pass --judge" in str(result.exception)


def test_the_judge_grades_every_row_through_rqa_serve(tmp_path, monkeypatch):
    server = shared_server()
    monkeypatch.setenv(KEY_ENV, KEY)
    backend = f"openai:base_url={server.api},api_key_env={KEY_ENV}"
    data = server.data
    args = [
        "evaluate",
        *("--data", str(data / "qa.jsonl"), "--documents", str(data / "documents.jsonl")),
        *("--index", str(data / "index"), "--max_new_tokens", str(MAX_NEW_TOKENS), "--limit", "1", "--top_k", "1"),
        *("--generator", backend, "--judge", backend, "--metrics", "all", "--output_dir", str(tmp_path)),
        *("--judge_max_new_tokens", "3"),
    ]
    result = CliRunner().invoke(cli, args)

    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert all(set(row["judge"]) == {"grade", "reason", "reply"} for row in rows)
    assert all(len(row["judge"]["reply"].split()) <= 3 for row in rows)  # --judge_max_new_tokens 3
    graded = [row["judge"]["grade"] for row in rows if row["judge"]["grade"] is not None]
    assert all(1 <= grade <= 5 for grade in graded)
    assert metrics["count/judge_unparsed"] == len(rows) - len(graded)  # counted and reported, never a crash
    assert ("gen/judge" in metrics) == bool(graded)
    assert "gen/f1" in metrics  # the other metrics of 'all' still ran

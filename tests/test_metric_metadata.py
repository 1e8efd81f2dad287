"""What metric keys mean comes from the metrics: headline keys, glossary lines, intervals and splits follow it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from test_metrics import prediction_rows

from rqa import contracts
from rqa.builtin.metrics import Metric
from rqa.contracts import KeyInfo
from rqa.display import print_run_summary
from rqa.errors import InvalidComponentError
from rqa.evaluation import score_rows
from rqa.pipeline import metric_factories
from rqa.plugins import load_plugins
from rqa.registry import Component, Registry
from rqa.report import build_report_figure
from rqa.scoring import glossary_keys, headline_keys, run_key_info

BUILTIN_HEADLINE = ["gen/f1", "gen/rougeL", "retr/recall@1", "retr/recall@4"]


def builtin_metrics() -> list[str]:
    """The metrics rqa ships in ``rqa.builtin.metrics`` (other plugins may add metrics that need a service)."""
    return [c.name for c in load_plugins()["metrics"] if c.plugin == "rqa-metrics"]


class Faithfulness(Metric):
    """A plugin's metric: one headline key, one lower-is-better key, one without a description."""

    metadata: Mapping[str, KeyInfo] = {
        "gen/faithful": KeyInfo("share of answers a retrieved passage supports", headline=True, by_retrieval=True),
        "gen/contradictions": KeyInfo("contradicted claims per answer", higher_is_better=False),
        "gen/claims": KeyInfo(higher_is_better=None),
    }

    def per_row(self, row: dict[str, Any]) -> dict[str, float]:
        supported = row["diagnosis"]["grounded"]
        return {"gen/faithful": float(supported), "gen/contradictions": 0.0, "gen/claims": 1.0}


def builtin_info(names: list[str], top_k: int = 4) -> dict[str, KeyInfo]:
    return run_key_info(metric_factories(names, top_k))


@pytest.mark.parametrize("names", [None, ["rouge", "retrieval", "token-f1"], ["retrieval", "token-f1", "rouge"]])
def test_builtin_headline_keys_answers_first_whatever_the_metric_order(names: list[str] | None) -> None:
    assert headline_keys(builtin_info(names or builtin_metrics())) == BUILTIN_HEADLINE


def test_builtin_glossary_keys_are_the_headline_then_accuracy() -> None:
    assert glossary_keys(builtin_info(builtin_metrics())) == [*BUILTIN_HEADLINE, "retr/accuracy"]
    assert headline_keys(builtin_info(["retrieval"], top_k=1)) == ["retr/recall@1"]  # K = 1: one key
    assert builtin_info(["retrieval"], top_k=1)["retr/recall@1"].description.endswith("the first one retrieved")


def test_every_builtin_metric_describes_every_key_it_reports() -> None:
    for name in builtin_metrics():
        metric = load_plugins()["metrics"].build(name, top_k=3)
        assert isinstance(metric, contracts.SupportsMetadata), name
        metric.update(prediction_rows())
        assert set(metric.compute()) == set(metric.metadata), name


def test_score_rows_gives_intervals_for_every_headline_key() -> None:
    scores = score_rows(prediction_rows(), metric_factories(builtin_metrics(), 4))
    intervals = sorted(key.removeprefix("ci95_low/") for key in scores if key.startswith("ci95_low/"))
    assert intervals == sorted(BUILTIN_HEADLINE)  # recall@1 too: it is a headline metric


def test_a_plugin_metric_gets_intervals_and_a_retrieval_split_from_its_metadata() -> None:
    scores = score_rows(prediction_rows(), {"faithfulness": Faithfulness})
    assert {"ci95_low/gen/faithful", "ci95_high/gen/faithful"} <= set(scores)
    assert not any(key.endswith(("/gen/contradictions", "/gen/claims")) for key in scores)
    grounded = [row["diagnosis"]["grounded"] for row in prediction_rows()]
    hits = [g for g, row in zip(grounded, prediction_rows(), strict=True) if row["diagnosis"]["retrieval_hit"]]
    assert scores["gen/faithful|retrieval_hit"] == pytest.approx(sum(hits) / len(hits))
    assert "gen/faithful|retrieval_miss" in scores


def test_a_metric_without_metadata_has_no_headline_and_no_intervals() -> None:
    class Plain(Metric):
        def per_row(self, row: dict[str, Any]) -> dict[str, float]:
            return {"gen/plain": 1.0}

    scores = score_rows(prediction_rows(), {"plain": Plain})
    assert scores["gen/plain"] == 1.0 and not any(key.startswith("ci95_") for key in scores)
    assert not any("|" in key for key in scores)


def test_metadata_that_is_not_key_info_fails_at_build() -> None:
    class Broken(Metric):
        metadata = {"gen/x": "a description"}  # noqa: RUF012

    registry = Registry("metrics")
    registry.add(Component("metrics", "broken", Broken, "acme", "rqa-acme", "1.2", ""))
    with pytest.raises(InvalidComponentError, match=r"without a valid metadata \(expected a mapping of names to"):
        registry.build("broken")


def record_summary(info: Mapping[str, KeyInfo] | None) -> str:
    from rich.console import Console

    def scores(value: float, prefix: str) -> dict[str, float]:
        return {f"{prefix}gen/faithful": value, f"{prefix}gen/contradictions": 1 - value, f"{prefix}gen/claims": 2.0}

    history = [{**scores(0.2, "eval_"), "step": 0}, {**scores(0.6, "eval_"), "step": 2}]
    console = Console(record=True, width=200)
    print_run_summary(console, history, 4, scores(0.5, ""), 2, info)
    return console.export_text()


def test_the_summary_shows_a_plugin_metric_as_its_metadata_says() -> None:
    text = record_summary(Faithfulness().metadata)
    assert "│ gen/faithful " in text and "+0.400" in text  # the comparison's one headline row
    assert "What the numbers mean (higher is better unless a line says otherwise)" in text
    assert "gen/faithful        share of answers a retrieved passage supports" in text
    assert "gen/contradictions  contradicted claims per answer (lower is better)" in text
    assert "gen/claims" not in text.split("What the numbers mean")[1]  # no description: not in the glossary


def test_the_report_plots_the_headline_keys_the_metadata_names() -> None:
    history = [{"eval_gen/faithful": 0.2, "eval_gen/f1": 0.1, "step": 0}, {"eval_gen/faithful": 0.6, "step": 2}]
    figure = build_report_figure(history, info=Faithfulness().metadata)
    lines = [line.get_label() for axes in figure.axes for line in axes.get_lines()]
    assert lines == ["gen/faithful"]
    default = build_report_figure(history)  # every installed metric's metadata: the built-ins' gen/f1
    assert [line.get_label() for axes in default.axes for line in axes.get_lines()] == ["gen/f1"]

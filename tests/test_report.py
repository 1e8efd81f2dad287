"""What a user sees at the end of ``rqa train``: the report figure, the base → fine-tuned table, the glossary."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rqa.display import print_comparison, print_run_summary
from rqa.report import CATEGORIES, TITLES, WRONG_F1, build_report_figure, failure_category, plot_run
from rqa.training import _evaluates_on_start

QUESTIONS = 10
# (retrieval_hit, answer_f1, grounded) per question: base model, then better answers after training
DIAGNOSES = {
    0: [(False, 0.0, False)] * 3 + [(True, 0.1, False)] * 6 + [(True, 0.6, False)],
    2: [(False, 0.0, False)] * 3 + [(True, 0.2, True)] * 3 + [(True, 0.5, False)] * 2 + [(True, 0.9, True)] * 2,
    4: [(False, 0.7, True)] * 3 + [(True, 0.3, True)] * 1 + [(True, 0.8, False)] * 1 + [(True, 0.9, True)] * 5,
}
# each category's count at each step, as ``failure_category`` sorts the rows above
EXPECTED = {
    0: {"retrieval miss": 3, "retrieved but wrong": 6, "ungrounded": 1, "good": 0},
    2: {"retrieval miss": 3, "retrieved but wrong": 3, "ungrounded": 2, "good": 2},
    4: {"retrieval miss": 3, "retrieved but wrong": 1, "ungrounded": 1, "good": 5},
}


def scores(f1: float, rouge: float, prefix: str = "eval_") -> dict[str, float]:
    """Metrics as ``RqaTrainer`` logs them: intervals for the metrics that have them, recall@1 without."""
    values = {"gen/f1": f1, "gen/rougeL": rouge, "retr/recall@1": 0.5, "retr/recall@4": 0.7, "retr/accuracy": 0.3}
    entry = {f"{prefix}{key}": value for key, value in values.items()}
    for key in ("gen/f1", "gen/rougeL", "retr/recall@4"):
        entry[f"{prefix}ci95_low/{key}"] = values[key] - 0.1
        entry[f"{prefix}ci95_high/{key}"] = min(values[key] + 0.1, 1.0)
    entry[f"{prefix}count/questions"] = float(QUESTIONS)
    return entry


def log_history() -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = [{"eval_loss": 3.0, "step": 0}, {**scores(0.1, 0.12), "step": 0}]
    for step, f1 in ((2, 0.3), (4, 0.45)):
        history += [{"loss": 4.0 / step, "step": step - 1}, {"loss": 3.5 / step, "step": step}]
        history += [{"eval_loss": 2.5 / step, "step": step}, {**scores(f1, f1 + 0.05), "step": step}]
    history.append({**scores(0.4, 0.42, prefix="test_"), "step": 4})
    return history


def write_predictions(eval_dir: Path) -> Path:
    eval_dir.mkdir()
    for step, rows in DIAGNOSES.items():
        lines = [
            json.dumps(
                {"question": f"q{i}", "diagnosis": {"retrieval_hit": hit, "answer_f1": f1, "grounded": grounded}}
            )
            for i, (hit, f1, grounded) in enumerate(rows)
        ]
        (eval_dir / f"step-{step}-predictions.jsonl").write_text("\n".join(lines) + "\n")
    return eval_dir


@pytest.fixture
def figure(tmp_path: Path) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = build_report_figure(log_history(), top_k=4, eval_dir=write_predictions(tmp_path / "eval"))
    FigureCanvasAgg(figure).draw()  # lays the figure out, as saving it does
    return figure


def panels(figure: Any) -> dict[str, Any]:
    by_title = {axes.get_title(loc="left"): axes for axes in figure.axes}
    return {name: next(a for t, a in by_title.items() if t.startswith(title)) for name, title in TITLES.items()}


def test_the_four_panels_say_what_they_show(figure: Any) -> None:
    titles = [axes.get_title(loc="left") for axes in figure.axes]
    assert titles == [
        "(a) Loss",
        "(b) End-to-end evaluation, eval set",
        f"(c) Test set, final model, {QUESTIONS} questions",
        f"(d) Where answers fail, eval set, {QUESTIONS} questions",
    ]
    loss = panels(figure)["loss"]
    assert [line.get_label() for line in loss.get_lines()] == ["train loss", "eval loss (step 0: base model)"]


def test_metrics_over_steps_start_at_the_base_model_with_interval_bands(figure: Any) -> None:
    from matplotlib.collections import PolyCollection

    metrics = panels(figure)["metrics"]
    lines = {line.get_label(): line for line in metrics.get_lines()}
    assert list(lines) == ["gen/f1", "gen/rougeL", "retr/recall@1", "retr/recall@4"]
    assert list(lines["gen/f1"].get_xdata()) == [0, 2, 4]
    assert list(lines["gen/f1"].get_ydata()) == pytest.approx([0.1, 0.3, 0.45])
    bands = [c for c in metrics.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 3  # recall@1 has no interval: no band
    f1_band = bands[0].get_paths()[0].vertices
    assert f1_band[:, 1].min() == pytest.approx(0.0) and f1_band[:, 1].max() == pytest.approx(0.55)
    assert [tick.get_text() for tick in metrics.get_xticklabels()] == ["0 (base)", "2", "4"]
    assert "95 % interval" in [text.get_text() for text in metrics.get_legend().get_texts()]


def test_test_panel_shows_each_headline_metric_with_its_interval(figure: Any) -> None:
    test = panels(figure)["test"]
    ticks = {tick.get_text(): tick.get_position()[1] for tick in test.get_yticklabels()}
    assert sorted(ticks, key=ticks.__getitem__, reverse=True) == [
        "gen/f1",
        "gen/rougeL",
        "retr/recall@1",
        "retr/recall@4",
    ]
    assert "0.400  (0.300–0.500)" in [text.get_text() for text in test.texts]


def test_failure_bars_stack_the_four_categories_and_count_every_question(figure: Any) -> None:
    failures = panels(figure)["failures"]
    assert [container.get_label() for container in failures.containers] == list(CATEGORIES)
    heights = {c.get_label(): [bar.get_height() for bar in c] for c in failures.containers}
    for position, step in enumerate(DIAGNOSES):
        assert {category: heights[category][position] for category in CATEGORIES} == EXPECTED[step]
        assert sum(heights[category][position] for category in CATEGORIES) == QUESTIONS
    legend = [text.get_text() for text in failures.get_legend().get_texts()]
    assert legend[1] == f"retrieved but wrong: gold passage retrieved, answer token F1 < {WRONG_F1}"


def test_legends_sit_outside_the_data(figure: Any) -> None:
    renderer = figure.canvas.get_renderer()
    legends = [axes for axes in figure.axes if axes.get_legend() is not None]
    assert len(legends) == 3  # the test panel labels its points directly
    for axes in legends:
        legend = axes.get_legend().get_window_extent(renderer)
        assert legend.y1 <= axes.get_window_extent(renderer).y0  # below the panel, never over it
        assert legend.y1 <= axes.xaxis.label.get_window_extent(renderer).y0  # nor over the axis label
        assert not legend.overlaps(axes.xaxis.get_tightbbox(renderer))  # nor over the tick labels


def test_failure_categories_follow_the_pipeline() -> None:
    assert failure_category({"retrieval_hit": False, "answer_f1": 1.0, "grounded": True}) == "retrieval miss"
    assert failure_category({"retrieval_hit": True, "answer_f1": WRONG_F1 - 0.01, "grounded": True}) == (
        "retrieved but wrong"
    )
    assert failure_category({"retrieval_hit": True, "answer_f1": WRONG_F1, "grounded": False}) == "ungrounded"
    assert failure_category({"retrieval_hit": True, "answer_f1": WRONG_F1, "grounded": True}) == "good"


def test_plot_run_writes_a_png_or_nothing(tmp_path: Path) -> None:
    path = plot_run(log_history(), tmp_path / "report.png", eval_dir=tmp_path / "missing")
    assert path == tmp_path / "report.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.png"]  # no temporary file left
    assert plot_run([], tmp_path / "empty.png") is None and not (tmp_path / "empty.png").exists()


def test_a_run_without_evaluations_still_gets_a_loss_panel(tmp_path: Path) -> None:
    figure = build_report_figure([{"loss": 2.0, "step": 1}, {"loss": 1.5, "step": 2}], eval_dir=tmp_path)
    titles = [axes.get_title(loc="left") for axes in figure.axes]
    assert titles == list(TITLES.values())
    texts = " ".join(text.get_text() for axes in figure.axes for text in axes.texts)
    assert "no end-to-end evaluation" in texts and "no test metrics" in texts


def record(function: Any, *args: Any) -> str:
    from rich.console import Console

    console = Console(record=True, width=200)
    function(console, *args)
    return console.export_text()


def test_summary_compares_the_base_model_with_the_fine_tuned_one_then_explains() -> None:
    history = log_history()
    test = {key.removeprefix("test_"): value for key, value in history[-1].items() if key.startswith("test_")}
    text = record(print_run_summary, history, 4, test, 4)
    assert f"eval set, {QUESTIONS} questions: base model (step 0) → fine-tuned (step 4)" in text
    f1_row = next(line for line in text.splitlines() if line.startswith("│ gen/f1 "))
    assert "0.100 (0.000–0.200)" in f1_row and "0.450 (0.350–0.550)" in f1_row and "+0.350" in f1_row
    assert text.index("base model (step 0)") < text.index("test metrics") < text.index("What the numbers mean")
    assert "retr/recall@4  share of questions whose every gold passage is among the 4 retrieved" in text
    assert "retr/accuracy  share of the retrieved passages that are gold" in text
    assert "gen/f1         token overlap with the gold answer (SQuAD-normalised" in text


def test_with_the_best_model_loaded_the_comparison_names_its_step() -> None:
    text = record(print_comparison, log_history(), 4, 2)
    assert "base model (step 0) → fine-tuned (best, step 2)" in text
    assert "+0.200" in text


def test_one_evaluation_has_nothing_to_compare() -> None:
    assert record(print_comparison, [{**scores(0.1, 0.1), "step": 4}], 4) == ""


@pytest.mark.parametrize(
    ("asked", "strategy", "has_eval", "has_e2e", "expected"),
    [
        (None, "steps", True, True, True),  # left unset: whenever the run evaluates end to end
        (None, "steps", True, False, False),  # --e2e_eval false
        (None, "no", True, True, False),  # --eval_strategy no
        (None, "steps", False, False, False),  # no eval file
        (False, "steps", True, True, False),
        (True, "steps", True, False, True),  # asked for: the eval loss alone
        (True, "no", False, False, False),  # nothing to evaluate
    ],
)
def test_the_base_model_is_evaluated_on_start_when_the_run_evaluates(
    asked: bool | None, strategy: str, has_eval: bool, has_e2e: bool, expected: bool
) -> None:
    args = SimpleNamespace(eval_on_start=asked, eval_strategy=strategy)
    assert _evaluates_on_start(args, has_eval, has_e2e) is expected

"""``report.png``: a training run in one picture that explains itself.

Four panels: (a) the training and evaluation losses; (b) the end-to-end headline metrics at every evaluation with
their 95 % bootstrap bands, step 0 being the base model before any training; (c) the test set's result; (d) per
evaluation, where the answers fail: retrieval, generation or grounding, counted from the predictions files. A
reader should not need the code to tell what went right: every panel says what it shows, legends sit outside the
data, and the caption states the thresholds. The headline metrics are those the run's metrics declare
(``rqa.scoring.headline_keys``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import cycle
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rqa.display import evaluations_by_step, interval
from rqa.scoring import headline_keys, run_key_info

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from rqa.contracts import KeyInfo

WRONG_F1 = 0.5  # an answer whose token F1 with the gold answer is below this counts as wrong
CATEGORIES = ("retrieval miss", "retrieved but wrong", "ungrounded", "good")
COLOURS = {
    "retrieval miss": "#c44e52",
    "retrieved but wrong": "#dd8452",
    "ungrounded": "#ccb974",
    "good": "#55a868",
    "gold retrieved": "#55a868",
}
TITLES = {
    "loss": "(a) Loss",
    "metrics": "(b) End-to-end evaluation, eval set",
    "test": "(c) Test set, final model",
    "failures": "(d) Where answers fail, eval set",
}
RETRIEVER_TITLES = {
    **TITLES,
    "metrics": "(b) Retrieval from the whole database, eval set",
    "failures": "(d) Where retrieval fails, eval set",
}
RETRIEVER_CATEGORIES = ("retrieval miss", "gold retrieved")
GENERATOR_CAPTION = (
    "Step 0 is the base model, evaluated before the first training step. Shaded bands and error bars: 95 % "
    "bootstrap intervals over the questions.\nRetrieval does not change while the generator trains, so the "
    "retr/ metrics stay flat; a change smaller than the intervals may be noise."
)
RETRIEVER_CAPTION = (
    "Step 0 is the base embedding model, evaluated before the first training step. Shaded bands and error bars: "
    "95 % bootstrap intervals over the questions;\na change smaller than the intervals may be noise."
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # one per headline metric, repeated beyond eight
MAX_LABELLED_STEPS = 12  # beyond this, step ticks are thinned out


def category_help() -> dict[str, str]:
    """What each category means, thresholds included: the legend of panel (d) and the README say the same."""
    from rqa.evaluation import GROUNDED_F1  # what the predictions' ``diagnosis.grounded`` was computed with

    return {
        "retrieval miss": "no gold passage among the retrieved",
        "retrieved but wrong": f"gold passage retrieved, answer token F1 < {WRONG_F1}",
        "ungrounded": f"answer right (F1 ≥ {WRONG_F1}) but F1 < {GROUNDED_F1} against every retrieved passage",
        "good": "right and grounded in a retrieved passage",
        "gold retrieved": "a gold passage among the retrieved",
    }


def failure_category(diagnosis: Mapping[str, Any], retrieval_only: bool = False) -> str:
    """One of ``CATEGORIES`` for a prediction row's ``diagnosis``: the first stage of the pipeline that failed;
    with ``retrieval_only`` (a retriever's run: no answers), one of ``RETRIEVER_CATEGORIES``."""
    if not diagnosis.get("retrieval_hit"):
        return "retrieval miss"
    if retrieval_only:
        return "gold retrieved"
    if float(diagnosis.get("answer_f1", 0.0)) < WRONG_F1:
        return "retrieved but wrong"
    if not diagnosis.get("grounded"):
        return "ungrounded"
    return "good"


def failure_counts(
    eval_dir: str | Path | None, steps: Sequence[int] | None = None, retrieval_only: bool = False
) -> dict[int, Counter[str]]:
    """Questions per category at each evaluation, from ``eval_dir/step-N-predictions.jsonl`` (only ``steps``)."""
    counts: dict[int, Counter[str]] = {}
    if eval_dir is None or not Path(eval_dir).is_dir():
        return counts
    for path in Path(eval_dir).glob("step-*-predictions.jsonl"):
        step = path.name.removeprefix("step-").removesuffix("-predictions.jsonl")
        if not step.isdigit() or (steps is not None and int(step) not in steps):
            continue
        counter: Counter[str] = Counter()
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                diagnosis = json.loads(line).get("diagnosis") if line.strip() else None
                if diagnosis is not None:
                    counter[failure_category(diagnosis, retrieval_only)] += 1
        counts[int(step)] = counter
    return dict(sorted(counts.items()))


def logged_test_scores(log_history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The test set's metrics that ``rqa train`` logged after training (``test_`` prefix removed)."""
    scores: dict[str, float] = {}
    for entry in log_history:
        scores.update({k.removeprefix("test_"): v for k, v in entry.items() if k.startswith("test_")})
    return scores


def build_report_figure(
    log_history: Sequence[Mapping[str, Any]],
    top_k: int = 4,
    eval_dir: str | Path | None = None,
    title: str | None = None,
    info: Mapping[str, KeyInfo] | None = None,
    retrieval_only: bool = False,
) -> Figure | None:
    """The report as a matplotlib ``Figure`` (no pyplot state); None when the run logged nothing to plot.

    ``info``: what the run's metric keys mean (``rqa.scoring.run_key_info``); by default, every installed metric's.
    ``retrieval_only``: a retriever's run (``rqa train-retriever``): its loss, retrieval metrics, and retrieval
    hits and misses instead of where answers fail.
    """
    from matplotlib.figure import Figure

    losses = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    eval_losses = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    evaluated = evaluations_by_step(log_history)
    test = logged_test_scores(log_history)
    if not losses and not eval_losses and not evaluated and not test:
        return None
    figure = Figure(figsize=(14, 10.5), layout="constrained")
    figure.get_layout_engine().set(rect=(0, 0.05, 1, 0.95), h_pad=0.12, hspace=0.08)  # room for the caption
    (loss_axes, metrics_axes), (test_axes, failure_axes) = figure.subplots(2, 2)
    titles = RETRIEVER_TITLES if retrieval_only else TITLES
    loss_label = "retriever loss" if retrieval_only else "cross-entropy per supervised token"
    _plot_losses(loss_axes, losses, eval_losses, loss_label)
    headline = headline_keys(run_key_info(None, top_k) if info is None else info)
    _plot_metrics(metrics_axes, evaluated, headline, titles["metrics"])
    _plot_test(test_axes, test, headline)
    counts = failure_counts(eval_dir, list(evaluated) or None, retrieval_only)
    _plot_failures(failure_axes, counts, RETRIEVER_CATEGORIES if retrieval_only else CATEGORIES, titles["failures"])
    figure.suptitle(title or "rqa training run", fontsize=14, fontweight="bold")
    figure.text(
        0.5,
        0.008,
        RETRIEVER_CAPTION if retrieval_only else GENERATOR_CAPTION,
        ha="center",
        va="bottom",
        fontsize=9,
        color="#444444",
    )
    return figure


def plot_run(
    log_history: Sequence[Mapping[str, Any]],
    path: str | Path,
    top_k: int = 4,
    eval_dir: str | Path | None = None,
    title: str | None = None,
    info: Mapping[str, KeyInfo] | None = None,
    retrieval_only: bool = False,
) -> Path | None:
    """Write the report (PNG) to ``path``; returns None when there is nothing to plot."""
    path = Path(path)
    title = title or f"rqa training run: {path.parent.name}"
    figure = build_report_figure(log_history, top_k, eval_dir, title, info, retrieval_only)
    if figure is None:
        return None
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=110, format="png")
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path


def _legend_below(axes: Axes, handles: list[Any] | None = None, labels: list[str] | None = None, ncol: int = 3) -> None:
    """Legends go under their panel, never over the data."""
    if handles is None:
        handles, labels = axes.get_legend_handles_labels()
    if handles:
        axes.legend(
            handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=ncol, frameon=False, fontsize=9
        )


def _step_ticks(axes: Axes, steps: Sequence[int], positions: Sequence[float] | None = None) -> None:
    """Ticks at the evaluated steps, step 0 named as the base model."""
    if not steps:
        return
    positions = list(positions if positions is not None else steps)
    every = max(1, -(-len(steps) // MAX_LABELLED_STEPS))
    chosen = [i for i in range(len(steps)) if i % every == 0 or i == len(steps) - 1]
    axes.set_xticks([positions[i] for i in chosen], [_step_label(steps[i]) for i in chosen])


def _step_label(step: int) -> str:
    return "0 (base)" if step == 0 else str(step)


def _nothing(axes: Axes, title: str, message: str) -> None:
    axes.set_title(title, loc="left")
    axes.set_axis_off()
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes, color="#666666", wrap=True)


def _plot_losses(
    axes: Axes, losses: list[tuple[int, float]], eval_losses: list[tuple[int, float]], ylabel: str
) -> None:
    from matplotlib.ticker import MaxNLocator

    if not losses and not eval_losses:
        _nothing(axes, TITLES["loss"], "no loss was logged")
        return
    if losses:
        axes.plot(*zip(*losses, strict=True), marker="." if len(losses) < 30 else None, label="train loss")
    if eval_losses:
        label = "eval loss (step 0: base model)" if eval_losses[0][0] == 0 else "eval loss"
        axes.plot(*zip(*eval_losses, strict=True), marker="o", label=label)
    axes.set_title(TITLES["loss"], loc="left")
    axes.set_xlabel("step")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    _legend_below(axes)


def _plot_metrics(
    axes: Axes, evaluated: dict[int, dict[str, float]], headline: Sequence[str], title: str = TITLES["metrics"]
) -> None:
    from matplotlib.patches import Patch

    if not evaluated:
        _nothing(axes, title, "no end-to-end evaluation while training\n(no --eval_file, or --e2e_eval false)")
        return
    steps = sorted(evaluated)
    width = max(steps[-1] - steps[0], 1) * 0.02  # a band around a lone evaluation
    banded = False
    for key, marker in zip(headline, cycle(MARKERS)):
        points = [(step, evaluated[step][key]) for step in steps if key in evaluated[step]]
        if not points:
            continue
        # distinct markers: series with equal values (0 before training, say) draw over one another
        (line,) = axes.plot(*zip(*points, strict=True), marker=marker, markersize=7, label=key)
        bounds = [(step, *b) for step in steps if key in evaluated[step] and (b := interval(evaluated[step], key))]
        if bounds:
            xs, lows, highs = (list(column) for column in zip(*bounds, strict=True))
            if len(xs) == 1:
                xs, lows, highs = [xs[0] - width, xs[0] + width], lows * 2, highs * 2
            axes.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.15, linewidth=0)
            banded = True
    axes.set_title(title, loc="left")
    axes.set(xlabel="step", ylabel="score (0–1)", ylim=(-0.03, 1.03))  # points at 0 or 1 stay whole
    _step_ticks(axes, steps)
    axes.grid(alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    if banded:
        handles.append(Patch(color="#888888", alpha=0.3, linewidth=0))
        labels.append("95 % interval")
    _legend_below(axes, handles, labels, ncol=5)


def _plot_test(axes: Axes, test: dict[str, float], headline: Sequence[str]) -> None:
    keys = [key for key in headline if key in test]
    if not keys:
        _nothing(axes, TITLES["test"], "no test metrics\n(pass --test_file to predict a test set after training)")
        return
    positions = list(range(len(keys)))[::-1]  # the first metric on top
    for position, key in zip(positions, keys, strict=True):
        value, bounds = test[key], interval(test, key)
        error = [[value - bounds[0]], [bounds[1] - value]] if bounds else None
        axes.errorbar([value], [position], xerr=error, fmt="o", capsize=5, color="#4c72b0")
        shown = f"{value:.3f}" + (f"  ({bounds[0]:.3f}–{bounds[1]:.3f})" if bounds else "")
        side = "left" if value < 0.5 else "right"  # the label runs towards the middle, never off the panel
        axes.annotate(shown, (value, position), xytext=(0, 9), textcoords="offset points", ha=side, fontsize=9)
    questions = test.get("count/questions")
    title = TITLES["test"] + (f", {questions:.0f} questions" if questions is not None else "")
    axes.set_title(title, loc="left")
    axes.set_yticks(positions, keys)
    axes.set(xlim=(-0.03, 1.03), ylim=(-0.6, len(keys) - 0.3), xlabel="score (0–1); bars: 95 % interval")
    axes.grid(axis="x", alpha=0.3)


def _plot_failures(
    axes: Axes,
    counts: dict[int, Counter[str]],
    categories: Sequence[str] = CATEGORIES,
    title: str = TITLES["failures"],
) -> None:
    from matplotlib.patches import Patch

    if not counts:
        _nothing(axes, title, "no eval predictions to diagnose\n(eval/step-N-predictions.jsonl)")
        return
    steps = list(counts)
    positions = list(range(len(steps)))
    totals = [sum(counts[step].values()) for step in steps]
    bottoms = [0] * len(steps)
    for category in categories:
        heights = [counts[step][category] for step in steps]
        bars = axes.bar(positions, heights, bottom=bottoms, width=0.65, color=COLOURS[category], label=category)
        for bar, height in zip(bars, heights, strict=True):
            if height and height >= 0.06 * max(totals):
                axes.text(bar.get_x() + bar.get_width() / 2, bar.get_y() + height / 2, str(height), ha="center",
                          va="center", fontsize=8)  # fmt: skip
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    axes.set_title(f"{title}, {max(totals)} questions", loc="left")
    axes.set(xlabel="step", ylabel="questions", ylim=(0, max(totals) * 1.04 or 1))
    _step_ticks(axes, steps, positions)
    handles = [Patch(color=COLOURS[c]) for c in categories]
    meaning = category_help()
    _legend_below(axes, handles, [f"{c}: {meaning[c]}" for c in categories], ncol=1)

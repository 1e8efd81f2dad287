"""Rich output shared by the commands.

Which keys are headline metrics and what they mean comes from the metrics (``rqa.contracts.KeyInfo``): pass the
run's ``rqa.scoring.run_key_info``; without it, every installed metric's is used.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rqa.scoring import glossary_keys, headline_keys, run_key_info

if TYPE_CHECKING:
    from rqa.contracts import KeyInfo


def make_console() -> Any:
    from rich.console import Console

    return Console(stderr=False)


def setup_logging(console: Any, level: int = logging.INFO) -> None:
    """rqa's own log lines through rich; the libraries' chatter stays at warnings."""
    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False)
    logger = logging.getLogger("rqa")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def interval(scores: Mapping[str, float], key: str, prefix: str = "") -> tuple[float, float] | None:
    """The 95 % bootstrap interval the evaluation stored next to ``key``, if it computed one."""
    low, high = scores.get(f"{prefix}ci95_low/{key}"), scores.get(f"{prefix}ci95_high/{key}")
    return (low, high) if low is not None and high is not None else None


def print_scores(console: Any, scores: dict[str, float], title: str) -> None:
    from rich.table import Table

    table = Table(title=f"{title} metrics", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% interval", justify="right")
    for key, value in scores.items():
        if key.startswith(("ci95_low/", "ci95_high/")):
            continue
        bounds = interval(scores, key)
        shown = f"{bounds[0]:.3f} – {bounds[1]:.3f}" if bounds else ""
        table.add_row(key, f"{value:.4f}" if not key.startswith("count/") else f"{value:.0f}", shown)
    console.print(table)


def evaluations_by_step(log_history: Sequence[Mapping[str, Any]], prefix: str = "eval_") -> dict[int, dict[str, float]]:
    """Every end-to-end evaluation in a Trainer log history, by step, without the key prefix."""
    steps: dict[int, dict[str, float]] = {}
    for entry in log_history:
        scores = {k.removeprefix(prefix): v for k, v in entry.items() if k.startswith(prefix)}
        if any(k.startswith(("gen/", "retr/")) for k in scores):
            steps.setdefault(int(entry.get("step", 0)), {}).update(scores)
    return steps


def print_comparison(
    console: Any,
    log_history: Sequence[Mapping[str, Any]],
    top_k: int,
    final_step: int | None = None,
    info: Mapping[str, KeyInfo] | None = None,
) -> bool:
    """The eval set's headline metrics at the first evaluation (step 0: the base model) and at ``final_step``.

    Both columns score the same questions with the same retrieval, so the change is the training's doing; a
    change smaller than the intervals' width may be noise. Returns whether there were two evaluations to compare.
    """
    from rich.table import Table

    steps = evaluations_by_step(log_history)
    if len(steps) < 2:
        return False
    first = min(steps)
    last = final_step if final_step in steps and final_step != first else max(steps)
    before, after = steps[first], steps[last]
    headline = headline_keys(run_key_info(None, top_k) if info is None else info)
    keys = [key for key in headline if key in before and key in after]
    if not keys:
        return False
    first_name = "base model (step 0)" if first == 0 else f"step {first}"
    last_name = f"best, step {last}" if final_step == last and last != max(steps) else f"step {last}"
    questions = after.get("count/questions")
    size = f", {questions:.0f} questions" if questions is not None else ""
    # the title on a line of its own: a table's title wraps at the table's width
    console.print(f"[bold]eval set{size}: {first_name} → fine-tuned ({last_name})[/]", highlight=False)
    table = Table()
    table.add_column("metric")
    table.add_column(first_name, justify="right")
    table.add_column(last_name, justify="right")
    table.add_column("change", justify="right")
    for key in keys:
        table.add_row(key, _with_interval(before, key), _with_interval(after, key), f"{after[key] - before[key]:+.3f}")
    console.print(table)
    return True


def _with_interval(scores: Mapping[str, float], key: str) -> str:
    bounds = interval(scores, key)
    return f"{scores[key]:.3f}" + (f" ({bounds[0]:.3f}–{bounds[1]:.3f})" if bounds else "")


def print_glossary(console: Any, keys: Sequence[str], info: Mapping[str, KeyInfo]) -> None:
    """What each metric with a description means, one line each: the tables above use bare metric names."""
    from rich.padding import Padding
    from rich.table import Table

    shown = [key for key in keys if key in info and info[key].description]
    if not shown:
        return
    if all(info[key].higher_is_better for key in shown):
        console.print("[bold]What the numbers mean[/] (all 0–1, higher is better; every key in the README)")
    else:
        console.print("[bold]What the numbers mean[/] (higher is better unless a line says otherwise)")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column()
    for key in shown:
        direction = {False: " (lower is better)", None: " (neither way is better)"}
        grid.add_row(key, info[key].description + direction.get(info[key].higher_is_better, ""))
    grid.add_row("(low–high)", "95 % bootstrap interval over the questions: a change smaller than it may be noise")
    console.print(Padding(grid, (0, 0, 0, 2)), highlight=False)


def print_run_summary(
    console: Any,
    log_history: Sequence[Mapping[str, Any]],
    top_k: int,
    test_scores: Mapping[str, float] | None = None,
    final_step: int | None = None,
    info: Mapping[str, KeyInfo] | None = None,
) -> None:
    """The end of ``rqa train``: base model → fine-tuned on the eval set, the test metrics, what they mean.

    ``info``: what the run's metric keys mean (``rqa.scoring.run_key_info``); by default, every installed metric's.
    """
    info = run_key_info(None, top_k) if info is None else info
    compared = print_comparison(console, log_history, top_k, final_step, info)
    if test_scores:
        print_scores(console, dict(test_scores), "test")
    evaluated = evaluations_by_step(log_history)
    if compared or test_scores or evaluated:
        present = {key for scores in [*evaluated.values(), test_scores or {}] for key in scores}
        print_glossary(console, [key for key in glossary_keys(info) if key in present], info)

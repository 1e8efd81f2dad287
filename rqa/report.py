"""A picture of a training run: the loss and the end-to-end metrics over steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

HEADLINE = ("eval_gen/f1", "eval_gen/rougeL", "eval_retr/recall@1")


def plot_run(log_history: list[dict[str, Any]], path: str | Path, top_k: int = 4) -> Path | None:
    """Write ``report.png``; returns None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    eval_losses = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    keys = [*HEADLINE, f"eval_retr/recall@{top_k}"]
    series = {k: [(e["step"], e[k]) for e in log_history if k in e] for k in keys}
    if not losses and not any(series.values()):
        return None
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for points, label in ((losses, "train loss"), (eval_losses, "eval loss")):
        if points:
            left.plot(*zip(*points, strict=True), marker="." if len(points) < 30 else None, label=label)
    left.set(title="Loss", xlabel="step")
    left.legend()
    for key, points in series.items():
        if points:
            right.plot(*zip(*points, strict=True), marker="o", label=key.removeprefix("eval_"))
    right.set(title="End-to-end evaluation", xlabel="step", ylim=(0, 1))
    right.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path

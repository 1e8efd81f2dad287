"""Rich output shared by the commands."""

from __future__ import annotations

import logging
from typing import Any


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


def print_scores(console: Any, scores: dict[str, float], title: str) -> None:
    from rich.table import Table

    table = Table(title=f"{title} metrics", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% interval", justify="right")
    for key, value in scores.items():
        if key.startswith(("ci95_low/", "ci95_high/")):
            continue
        low, high = scores.get(f"ci95_low/{key}"), scores.get(f"ci95_high/{key}")
        interval = f"{low:.3f} – {high:.3f}" if low is not None and high is not None else ""
        table.add_row(key, f"{value:.4f}" if not key.startswith("count/") else f"{value:.0f}", interval)
    console.print(table)

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
    for key, value in scores.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)

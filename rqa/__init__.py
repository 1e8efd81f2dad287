"""rqa: fine-tune decoder LLMs for retrieval-augmented question answering and measure them end to end."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]


def __getattr__(name: str) -> Any:
    """``from rqa import hookimpl`` for plugins, without importing pluggy for every ``import rqa``."""
    if name == "hookimpl":
        from rqa.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module 'rqa' has no attribute {name!r}")

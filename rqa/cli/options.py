"""Small click helpers shared by the commands."""

from __future__ import annotations

import importlib
from typing import Any

import click


def option(*names: str, **kwargs: Any):
    """A click option accepting both ``--some_flag`` and ``--some-flag``."""
    spellings: list[str] = []
    for name in names:
        if name.startswith("--"):
            for spelling in (name, name.replace("_", "-"), "--" + name[2:].replace("-", "_")):
                if spelling not in spellings:
                    spellings.append(spelling)
        else:
            spellings.append(name)
    return click.option(*spellings, **kwargs)


class LazyGroup(click.Group):
    """A group whose commands are imported only when run, so ``--help`` stays fast."""

    def __init__(self, *args: Any, lazy_commands: dict[str, tuple[str, str]] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy_commands])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy_commands:
            module_name, attribute = self.lazy_commands[name][0].split(":")
            return getattr(importlib.import_module(module_name), attribute)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, help_text) in sorted(self.lazy_commands.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

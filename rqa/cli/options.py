"""Small click helpers shared by the commands."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
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


# the training commands hand every flag to Hugging Face's HfArgumentParser, help included
TRAINING_COMMAND = {
    "context_settings": {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    "add_help_option": False,
}


def wants_help(argv: Sequence[str], make_parser: Callable[[], Any]) -> bool:
    """Print the argument parser's help when ``-h``/``--help`` is among ``argv``; whether it was."""
    if "-h" in argv or "--help" in argv:
        click.echo(make_parser().format_help())
        return True
    return False


def job_console() -> Any:
    """rich's console for a long job, with rqa's log lines going through it."""
    from rqa.display import make_console, setup_logging

    console = make_console()
    setup_logging(console)
    return console


def print_results(results: Mapping[str, Any], what: Mapping[str, str], first: Sequence[str] = ()) -> None:
    """The closing list of a job's results: each path and what it holds, ``first`` on top. Plain lines, so that
    paths are never wrapped or styled. Nothing on processes other than the main one (their ``results`` are empty).
    """
    if not results:
        return
    click.echo(click.style("Done.", fg="green", bold=True) + " Results:")
    order = {label: rank for rank, label in enumerate(first)}
    width = max(len(str(path)) for path in results.values())
    for label, path in sorted(results.items(), key=lambda item: order.get(item[0], len(order))):
        click.echo(f"  {label:<17} {path!s:<{width}}  {what.get(label, '')}".rstrip())

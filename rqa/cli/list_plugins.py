"""``rqa list-plugins``: what is installed, who provides it, and what failed to load."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from rqa.cli.options import option
from rqa.registry import KINDS

if TYPE_CHECKING:
    from rqa.plugins import PluginInfo


@click.command("list-plugins")
@option("--kind", type=click.Choice(KINDS), help="Show one kind of component only.")
@option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@option("--strict", is_flag=True, help="Exit with status 1 if any plugin failed to load.")
@option(
    "--debug",
    is_flag=True,
    help="Trace every plugin hook call and its arguments on stderr (same as RQA_DEBUG_PLUGINS=1).",
)
def list_plugins(kind: str | None, as_json: bool, strict: bool, debug: bool) -> None:
    """List every registered component by kind, with the plugin and package that provides it."""
    from rqa.plugins import load_plugins

    # not get_plugins: its one-line warnings would repeat what is listed here
    plugin_set = load_plugins(debug=True if debug else None)
    kinds = [kind] if kind else list(KINDS)
    components = [
        {
            "kind": k,
            "name": c.name,
            "plugin": c.plugin,
            "package": c.package,
            "version": c.version,
            "description": c.description,
        }
        for k in kinds
        for c in plugin_set[k]
    ]
    plugins = [
        {
            "name": p.name,
            "package": p.package,
            "version": p.version,
            "ok": p.ok,
            "disabled": p.disabled,
            "error": p.error,
        }
        for p in plugin_set.plugins
    ]
    if as_json:
        click.echo(json.dumps({"components": components, "plugins": plugins}, indent=2))
    else:
        _print_tables(kinds, components, plugin_set.failed, [p for p in plugin_set.plugins if p.disabled])
    if strict and plugin_set.failed:
        raise click.exceptions.Exit(1)


def _print_tables(
    kinds: list[str], components: list[dict], failed: list[PluginInfo], disabled: list[PluginInfo]
) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    for kind in kinds:
        table = Table(title=kind, title_justify="left", show_edge=False)
        for column in ("name", "plugin", "package", "description"):
            table.add_column(column, overflow="fold")
        for row in (c for c in components if c["kind"] == kind):
            package = f"{row['package']}=={row['version']}" if row["package"] else "?"
            table.add_row(*(Text(cell) for cell in (row["name"], row["plugin"], package, row["description"])))
        console.print(table)
        console.print()
    for plugin in disabled:
        console.print(Text(f"{plugin.provider} is disabled (RQA_DISABLE_PLUGINS)", style="yellow"))
    for plugin in failed:
        console.print(Text(f"{plugin.provider} failed to load:", style="bold red"))
        console.print(plugin.error, markup=False, highlight=False)

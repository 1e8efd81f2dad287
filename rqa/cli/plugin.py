"""``rqa plugin``: tools for plugin authors; ``rqa plugin new`` starts a plugin package."""

from __future__ import annotations

import click

from rqa.cli.options import option
from rqa.scaffold.kinds import TEMPLATES


@click.group("plugin")
def plugin() -> None:
    """Tools for writing rqa plugins."""


@plugin.command("new")
@click.argument("name")
@option(
    "--kind",
    type=click.Choice(list(TEMPLATES)),
    default="metric",
    show_default=True,
    help="The kind of component the package registers.",
)
@option("--dir", "directory", default=".", show_default=True, help="Where the package folder (rqa-NAME) goes.")
def new(name: str, kind: str, directory: str) -> None:
    """Write a plugin package rqa-NAME that registers the KIND component NAME, with a README and a test.

    It installs with `pip install -e rqa-NAME`, and its test passes as written: edit the example component.
    """
    from rqa.scaffold import new_plugin

    root = new_plugin(name, kind, directory)
    click.echo(f"Wrote {root}:")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        click.echo(f"  {path.relative_to(root)}")
    click.echo(f"Next: pip install -e {root} && rqa list-plugins --kind {TEMPLATES[kind].kind}")

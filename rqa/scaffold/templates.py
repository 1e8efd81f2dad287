"""The files of a plugin package that every kind shares: ``pyproject.toml``, README, the hook, the head of the test.

``string.Template`` placeholders: ``$name`` (component and plugin), ``$package`` (distribution), ``$module``,
``$kind`` (registry kind), ``$ident`` (the factory), ``$noun``, ``$summary`` and ``$usage`` (from the kind's
``KindTemplate``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KindTemplate:
    kind: str  # the registry kind: the hook is register_<kind>
    summary: str  # what the example component does, for the README
    usage: str  # how to use it, for the README
    module: str  # the plugin module's source, up to its hook (``HOOK``, the same for every kind, follows)
    test_imports: tuple[str, ...]  # the import lines of the plugin's test, sorted
    test: str  # the plugin's test, after the checks every kind shares


HOOK = """

@hookimpl
def register_$kind(register) -> None:
    register("$name", $ident)
"""

TEST_HEAD = '''"""$package as rqa sees it: found through its entry point, true to its contract, working."""

from __future__ import annotations

$imports
KIND = "$kind"


def test_rqa_finds_the_plugin_through_its_entry_point() -> None:
    plugins = load_plugins()
    assert [plugin.error for plugin in plugins.failed if plugin.name == "$name"] == []
    component = plugins[KIND].get("$name")
    assert component.plugin == "$name" and component.package.replace("_", "-") == "$package"
    assert component.description  # the factory's docstring: rqa list-plugins shows it


def built(**options: str):
    """The component built as rqa builds it (options as strings, as on the command line), contract checked."""
    component = load_plugins()[KIND].build("$name", options)
    assert contracts.missing(KIND, component) == []
    return component
'''


PYPROJECT = """[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$package"
version = "0.1.0"
description = "An rqa $noun: $summary."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["rqa"]

[project.optional-dependencies]
test = ["pytest>=8"]

# rqa finds plugins through this entry-point group: the name is the plugin's, the value the module with the hooks
[project.entry-points.rqa]
$name = "$module"

[tool.setuptools]
package-dir = { "" = "src" }
packages = ["$module"]

[tool.ruff]
line-length = 120
"""

README = """# $package

An rqa plugin with one $noun, `$name`: $summary.

## Use

```bash
pip install -e .                  # rqa finds it through the `rqa` entry point in pyproject.toml
rqa list-plugins --kind $kind   # $name is listed, with this package as its provider
$usage
```

## Develop

`src/$module/__init__.py` holds the hook (`register_$kind`) and the component; edit the component, keep the
hook. rqa checks a built component against its contract (`rqa.contracts`) and names this plugin when something
is missing; `rqa list-plugins --debug` traces the hook calls. rqa's CONTRIBUTING.md explains each kind.

```bash
pip install -e ".[test]"
pytest                            # tests/ loads the plugin the way rqa does
```

To publish, build and upload as usual (`python -m build`, `twine upload`); users only `pip install $package`.
"""

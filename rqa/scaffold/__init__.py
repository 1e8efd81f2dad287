"""``rqa plugin new``: a plugin package that installs, registers one working component and tests it.

The package is what CONTRIBUTING.md describes, ready to edit: a ``pyproject.toml`` with the ``rqa`` entry point,
a ``src/`` module with the hook and an example component of the chosen kind (``rqa.scaffold.kinds``), a README,
and a test that checks the component through rqa's own plugin loading, so it passes once installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

from rqa.errors import RqaError
from rqa.registry import SINGULAR
from rqa.scaffold.kinds import TEMPLATES
from rqa.scaffold.templates import HOOK, PYPROJECT, README, TEST_HEAD, KindTemplate

_VALID_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")  # a component name that also makes a Python module name


@dataclass(frozen=True)
class PluginNames:
    """The names one plugin name makes: distribution, module, Python identifiers, a metric key."""

    name: str  # the component's and the plugin's name, as users type it
    package: str
    module: str
    ident: str
    cls: str

    @classmethod
    def of(cls, name: str) -> PluginNames:
        if not _VALID_NAME.match(name):
            raise RqaError(
                f"invalid plugin name {name!r}: start with a lower-case letter and use only lower-case letters, "
                "digits, '-' and '_'"
            )
        name = name.removeprefix("rqa-").removeprefix("rqa_") or name
        ident = name.replace("-", "_")
        title = "".join(part.capitalize() for part in ident.split("_"))
        return cls(name, f"rqa-{name.replace('_', '-')}", f"rqa_{ident}", ident, title)

    def placeholders(self, template: KindTemplate) -> dict[str, str]:
        return {
            "name": self.name,
            "package": self.package,
            "module": self.module,
            "ident": self.ident,
            "Class": self.cls,
            "key": f"gen/{self.ident}",
            "kind": template.kind,
            "noun": SINGULAR[template.kind],
        }


def plugin_files(name: str, kind: str) -> dict[str, str]:
    """Relative path → content of the package for component ``name`` of ``kind`` (a ``TEMPLATES`` key)."""
    template = TEMPLATES[kind]
    names = PluginNames.of(name)
    values = names.placeholders(template)
    values["summary"] = Template(template.summary).substitute(values)
    values["usage"] = Template(template.usage).substitute(values)
    values["imports"] = "".join(f"{line}\n" for line in template.test_imports)
    return {
        "pyproject.toml": Template(PYPROJECT).substitute(values),
        "README.md": Template(README).substitute(values),
        f"src/{names.module}/__init__.py": Template(template.module + HOOK).substitute(values),
        f"tests/test_{names.ident}.py": Template(TEST_HEAD + template.test).substitute(values),
    }


def new_plugin(name: str, kind: str, directory: str | Path = ".", check_taken: bool = True) -> Path:
    """Write the package into ``directory/<package>`` and return its path; never overwrites anything.

    With ``check_taken``, a name an installed plugin already registers for ``kind`` is refused: both would
    load, and rqa refuses duplicate names.
    """
    names = PluginNames.of(name)
    template = TEMPLATES[kind]
    if check_taken:
        from rqa.plugins import get_plugins

        registry = get_plugins()[template.kind]
        if names.name in registry.names():
            provider = registry.get(names.name).provider
            noun = SINGULAR[template.kind]
            raise RqaError(f"{provider} already registers a {noun} named '{names.name}': choose another name")
    root = Path(directory) / names.package
    if root.exists() and any(root.iterdir()):
        raise RqaError(f"{root} already exists and is not empty: choose another --dir or name")
    for relative, content in plugin_files(name, kind).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return root

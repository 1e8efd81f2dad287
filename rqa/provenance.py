"""Which plugin, from which distribution at which version, provided each component a run used.

A run's numbers depend on the code behind every name it resolved (``chatml``, ``dense-faiss``, ``token-f1``…), and
that code can come from any installed plugin. Recording the provider with the name, next to rqa's own version,
lets a reader of ``rqa_args.json`` (or ``generation.json``) tell which code produced a result and which packages
to install to reproduce it. The registry already knows every provider (each entry is registered through a
``register`` bound to its plugin), so this only reads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rqa.pipeline import ComponentChoice

RQA_VERSION_KEY = "rqa_version"
COMPONENTS_KEY = "resolved_components"


@dataclass(frozen=True)
class ComponentSource:
    """A resolved component and who provided it; ``plugin``, ``package`` and ``version`` are None where unknown."""

    kind: str  # the registry kind: formatters, losses, retrievers, metrics, retriever_losses, generators
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    plugin: str | None = None
    package: str | None = None
    version: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "options": dict(self.options),
            "plugin": self.plugin,
            "package": self.package,
            "version": self.version,
        }

    @classmethod
    def from_json(cls, value: Any) -> ComponentSource | None:
        """The entry, or None when it is not one (the caller reports the file and key)."""
        if not isinstance(value, Mapping) or not all(isinstance(value.get(k), str) for k in ("kind", "name")):
            return None
        options = value.get("options") or {}
        texts = [value.get(k) for k in ("plugin", "package", "version")]
        if not isinstance(options, Mapping) or not all(t is None or isinstance(t, str) for t in texts):
            return None
        return cls(value["kind"], value["name"], dict(options), *texts)


def rqa_version() -> str:
    from rqa import __version__

    return __version__


def source_of(choice: ComponentChoice) -> ComponentSource:
    """``choice`` with the plugin, distribution and version that registered its name."""
    from rqa.plugins import get_plugins

    component = get_plugins()[choice.kind].get(choice.name)
    return ComponentSource(
        choice.kind, choice.name, dict(choice.options), component.plugin, component.package, component.version
    )


def sources_of(choices: Iterable[ComponentChoice | None]) -> tuple[ComponentSource, ...]:
    """``source_of`` each choice, in order; None ones (a component the run did not use) left out."""
    return tuple(source_of(choice) for choice in choices if choice is not None)


def provenance_json(version: str, sources: Iterable[ComponentSource]) -> dict[str, Any]:
    """``{"rqa_version": ..., "resolved_components": [...]}``: the keys every file that records a run carries."""
    return {RQA_VERSION_KEY: version, COMPONENTS_KEY: [source.to_json() for source in sources]}


def plugin_versions(choices: Iterable[ComponentChoice | None]) -> dict[str, Any]:
    """``provenance_json`` of this rqa and the chosen components: ``rqa_args.json`` has it through
    ``rqa.runs.RunRecord``, any other writer (``generation.json``) adds this mapping to its own."""
    return provenance_json(rqa_version(), sources_of(choices))

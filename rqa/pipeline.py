"""Choosing a run's components by name: checked up front, built only when needed (by ``rqa.assembly``).

Every command that picks components by name checks them here, all problems at once; ``--dry_run`` runs this
half alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rqa.errors import RqaError
from rqa.plugins import get_plugins
from rqa.registry import parse_component_spec, validate_options
from rqa.schema import Document, Example, read_documents

log = logging.getLogger("rqa")
# given by the command when it builds a component, never by the user: ``model`` is the embedder a retriever loss trains,
# ``encoder`` an embedder already loaded that a retriever uses instead of loading ``embedding_model`` again
RUNTIME_CONTEXT = frozenset({"tokenizer", "embedding_model", "top_k", "model", "encoder"})
# the same for one kind only: how that embedder reads passages is ``--embed_urls`` (a retriever's own option)
KIND_CONTEXT = {"retriever_losses": frozenset({"embed_urls"})}


@dataclass
class ComponentChoice:
    kind: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def build(self, **context: Any) -> Any:
        return get_plugins()[self.kind].build(self.name, self.options, **context)


def choose(
    kind: str, spec: str, option_pairs: Sequence[str] = (), probe: dict[str, Any] | None = None, **defaults: Any
) -> ComponentChoice:
    """Resolve a name and its options against the registry; raises before anything heavy loads.

    With ``probe`` (runtime context), the component is also built once, so values its factory rejects are
    reported now too; only for kinds whose factories are cheap (losses, retrievers).
    """
    name, options = parse_component_spec(spec, list(option_pairs))
    component = get_plugins()[kind].get(name)
    merged = {**{k: v for k, v in defaults.items() if v is not None}, **options}
    context = RUNTIME_CONTEXT | KIND_CONTEXT.get(kind, frozenset())
    typed = validate_options(component, merged, context=context)  # rqa_args.json keeps 0.1, not "0.1"
    choice = ComponentChoice(kind, name, typed)
    if probe is not None:
        choice.build(**probe)
    return choice


def with_defaults(choice: ComponentChoice, **defaults: Any) -> ComponentChoice:
    """``choice`` with ``defaults`` for the options its component takes and the user left unset."""
    unset = {key: value for key, value in defaults.items() if key not in choice.options}
    return ComponentChoice(
        choice.kind, choice.name, {**get_plugins()[choice.kind].accepted(choice.name, unset), **choice.options}
    )


def choose_all(checks: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Run several checks (``choose`` calls, file reads) and collect every problem instead of stopping at the first."""
    results: dict[str, Any] = {}
    problems: list[str] = []
    for label, thunk in checks.items():
        try:
            results[label] = thunk()
        except RqaError as error:
            problems.append(str(error))
    return results, problems


def check_all(checks: dict[str, Any]) -> dict[str, Any]:
    """``choose_all``, raising one error that lists every problem; the results by label otherwise."""
    results, problems = choose_all(checks)
    if problems:
        raise RqaError("the configuration has problems:\n  - " + "\n  - ".join(problems))
    return results


def metric_names(requested: Sequence[str]) -> list[str]:
    registry = get_plugins()["metrics"]
    names: list[str] = []
    for entry in requested:
        for name in (n.strip() for n in entry.split(",")):
            if name == "all":
                # opt-in metrics (a factory with ``opt_in = True``, e.g. an LLM judge) are only run when named
                names += [n for n in registry.names() if not getattr(registry.get(n).factory, "opt_in", False)]
            elif name:
                registry.get(name)  # unknown names fail here with the list of choices
                names.append(name)
    return list(dict.fromkeys(names))


def metric_factories(names: Sequence[str], top_k: int) -> dict[str, Any]:
    registry = get_plugins()["metrics"]
    return {name: partial(registry.build, name, None, top_k=top_k) for name in names}


def load_database(path: str | None, examples: Sequence[Example]) -> list[Document]:
    """The document database; without one, the passages named in the QA files (with a warning)."""
    if path:
        return read_documents(path)
    seen: dict[str, Document] = {}
    for example in examples:
        for document in (*example.gold_docs, *example.hard_neg_docs):
            seen.setdefault(document.page_content, document)
    log.warning(
        "no document database given (--full_dataset_file_path / --documents): retrieving from the %d "
        "passages found in the QA files",
        len(seen),
    )
    return list(seen.values())


def build_retriever(
    choice: ComponentChoice,
    documents: list[Document],
    index_dir: str | Path | None,
    rebuild: str = "auto",
    embedding_model: str | None = None,
    encoder: Any = None,
) -> Any:
    """Build the retriever (``embedding_model``, and ``encoder`` when that model is already loaded, go to factories
    that take them) and load or build its index."""
    context = {"embedding_model": embedding_model} if embedding_model else {}
    if encoder is not None:
        context["encoder"] = encoder
    retriever = choice.build(**context)
    built = retriever.build(documents, index_dir, rebuild=rebuild, progress=True)
    where = f" at {index_dir}" if index_dir else ""
    log.info("%s index%s: %s (%d documents)", choice.name, where, "built" if built else "reused", len(documents))
    return retriever

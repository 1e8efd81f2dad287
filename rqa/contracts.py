"""What rqa's core reads from each kind of component, declared once and checked when a component is built.

One ``Protocol`` per kind lists every attribute the core uses; ``missing(kind, component)`` compares a built
component against it, so a plugin that forgets one fails when it is built (``--dry_run`` builds losses and
retrievers) with its name, rather than deep inside a training run. Methods must be callable; annotated
attributes must exist, and a ``Literal`` or plain-class annotation also constrains the value.

Optional members live in separate protocols (``SupportsPerRow``, ``SupportsMetadata``), which the core checks
with ``isinstance``; a component that has one must have it right.
This module imports nothing heavy, so ``rqa list-plugins`` and ``--dry_run`` stay fast.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from rqa.formatting import Rendered
    from rqa.schema import Document, Example

Row = dict[str, Any]
Supervise = Literal["answer", "sequence"]


@runtime_checkable
class Formatter(Protocol):
    """Turns an example into the pieces a model reads and writes (see ``rqa.formatting``).

    ``end_of_turn`` closes a reply: generation stops on it, and it is appended to answers when counting
    tokens. ``system_text(passages)`` is the instruction plus passages, which ``rqa render`` shows and
    counts. Subclass ``rqa.formatting.Formatter`` (or ``LayoutFormatter``) to get ``system_text``.
    """

    end_of_turn: str

    def render(self, example: Example, passages: Sequence[Document], with_answer: bool = True) -> Rendered: ...

    def system_text(self, passages: Sequence[Document]) -> str: ...


@runtime_checkable
class Loss(Protocol):
    """Maps logits at supervised positions (``[N, vocab]``) and their targets (``[N]``) to a scalar.

    ``num_items`` is the number of supervised tokens in the whole optimizer step (all accumulated
    micro-batches and processes), so dividing a summed loss by it averages correctly; it may be None
    outside training. ``supervise`` tells the data pipeline which tokens get labels.
    """

    supervise: Supervise

    def __call__(self, logits: Any, targets: Any, num_items: int | None = None) -> Any: ...


@runtime_checkable
class Retriever(Protocol):
    """Indexes a document database and returns the top-k passages per query, best first.

    Subclass ``rqa.indexing.IndexedRetriever`` to get ``build`` (manifest checks, index reuse, atomic
    writes) and write only ``manifest``, ``index``, ``save``, ``load`` and ``retrieve``.
    """

    def build(
        self, documents: Sequence[Document], index_dir: Any = None, rebuild: str = "auto", progress: bool = False
    ) -> bool: ...

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[tuple[Document, float]]]: ...


@runtime_checkable
class Metric(Protocol):
    """Accumulates prediction rows (``update``) and returns named values (``compute``)."""

    def update(self, rows: Iterable[Row]) -> None: ...

    def compute(self) -> dict[str, float]: ...


@runtime_checkable
class RetrieverLoss(Protocol):
    """Trains an embedder in ``rqa train-retriever``: a ``torch.nn.Module`` that sentence-transformers' trainer calls.

    The factory receives the model it trains as ``model`` (runtime context) and keeps it as ``model``, which
    the trainer swaps for its wrapped copy. ``sentence_features`` holds the tokenized columns in order:
    question, gold passage, then a hard negative where the batch has one; ``labels`` is None. It returns a
    scalar tensor.
    """

    model: Any

    def __call__(self, sentence_features: Any, labels: Any) -> Any: ...


@runtime_checkable
class Generator(Protocol):
    """Produces text with a model, local or behind an endpoint (``rqa.backends``; built-ins ``hf`` and ``openai``).

    ``answer`` answers each example's question (its ``chat_history`` included) from its passages, rendered the way
    the backend's model expects: ``hf`` with the run's formatter, exactly as in training; ``openai`` as chat
    messages. ``chat`` continues free-form conversations of ``{"role", "content"}`` messages (judges, question
    generation). Both return one string per input, in order, greedy unless the backend is told otherwise.
    """

    def answer(
        self, examples: Sequence[Example], passages: Sequence[Sequence[Document]], max_new_tokens: int = 128
    ) -> list[str]: ...

    def chat(self, conversations: Sequence[Sequence[Mapping[str, str]]], max_new_tokens: int = 128) -> list[str]: ...


@runtime_checkable
class PassageFilter(Protocol):
    """Says whether ``rqa generate`` should ask questions about a passage: True keeps it (``--filter NAME``).

    Built once per run, after the database is read and before anything is generated. A filter that must see the
    whole database to judge one passage (``boilerplate`` counts the lines that recur across it) declares
    ``documents`` in its factory and receives every passage there; a plain function ``(document) -> bool`` is a
    filter too. Its description (the factory's docstring) says what it removes: ``generation.json`` and the
    summary table show it beside the count.
    """

    def __call__(self, document: Document) -> bool: ...


@runtime_checkable
class SupportsPerRow(Protocol):
    """Optional for metrics: one score per row, used for the bootstrap confidence intervals.

    A metric without ``per_row`` still reports its ``compute`` values, only without ``ci95_*`` intervals.
    """

    def per_row(self, row: Row) -> dict[str, float]: ...


@runtime_checkable
class SupportsTrainingData(Protocol):
    """Optional for retriever losses: rows of their own instead of (question, gold passage[, hard negative]).

    ``rqa train-retriever`` calls it once with the checked training examples and the document database; the
    returned ``datasets.Dataset`` feeds sentence-transformers' trainer (a ``label`` column reaches the loss as
    ``labels``).
    """

    def training_data(self, examples: Sequence[Example], documents: Sequence[Document]) -> Any: ...


@runtime_checkable
class SupportsRefresh(Protocol):
    """Optional for retriever losses: ``refresh(model)`` runs before the first step and every ``refresh_steps``
    optimizer steps, with the model as it is then (to re-index the database with it, say)."""

    refresh_steps: int

    def refresh(self, model: Any) -> None: ...


@dataclass(frozen=True)
class KeyInfo:
    """What one value a metric reports means, so tables, the glossary and ``report.png`` need no list of names.

    ``headline``: a run is judged by it first (the base → fine-tuned table, ``report.png``, 95 % bootstrap
    intervals). ``description``: one line for the glossary ``rqa train`` prints; keys without one stay out of it.
    ``higher_is_better``: True, False, or None where neither applies (a length). ``by_retrieval``: also report
    its mean over the questions whose retrieval found a gold passage and over the rest
    (``KEY|retrieval_hit``, ``KEY|retrieval_miss``): whether errors come from retrieval or from the generator.
    Headline and split values come from ``per_row``.
    """

    description: str = ""
    headline: bool = False
    higher_is_better: bool | None = True
    by_retrieval: bool = False


@runtime_checkable
class SupportsMetadata(Protocol):
    """Optional for metrics: what each of its keys means, in the order to show them.

    A metric without ``metadata`` still reports its values; none of them is then a headline or in the glossary.
    """

    metadata: Mapping[str, KeyInfo]


CONTRACTS: dict[str, type] = {
    "formatters": Formatter,
    "losses": Loss,
    "retrievers": Retriever,
    "metrics": Metric,
    "retriever_losses": RetrieverLoss,
    "generators": Generator,
    "passage_filters": PassageFilter,
}
OPTIONAL: dict[str, tuple[type, ...]] = {
    "metrics": (SupportsPerRow, SupportsMetadata),
    "retriever_losses": (SupportsTrainingData, SupportsRefresh),
}


def methods(protocol: type) -> tuple[str, ...]:
    """The methods ``protocol`` declares (callables defined in its body)."""
    return tuple(
        name
        for name, value in vars(protocol).items()
        if inspect.isfunction(value) and (name == "__call__" or not name.startswith("__"))  # not Protocol's own
    )


def attributes(protocol: type) -> dict[str, Any]:
    """The data attributes ``protocol`` declares, with their (resolved) annotations."""
    namespace = {"Rendered": Any, "Document": Any, "Example": Any}  # only for resolving; not checked
    return typing.get_type_hints(protocol, globalns={**globals(), **namespace})


def members(kind: str) -> tuple[str, ...]:
    """Every attribute the core reads from a ``kind`` component, required ones only."""
    protocol = CONTRACTS[kind]
    return (*attributes(protocol), *methods(protocol))


def _defines(cls: type, name: str) -> bool:
    """Whether ``cls`` (not ``object`` or the metaclass) defines ``name``: ``type`` makes every class callable."""
    return any(name in vars(klass) for klass in cls.__mro__ if klass is not object)


def missing(kind: str, component: Any) -> list[str]:
    """What ``component`` lacks, or has wrong, to be a ``kind``: ``[]`` when it satisfies the contract."""
    protocol = CONTRACTS.get(kind)
    if protocol is None:
        return []
    problems = [
        name
        for name in methods(protocol)
        if not (_defines(type(component), name) if name == "__call__" else callable(getattr(component, name, None)))
    ]
    for name, annotation in attributes(protocol).items():
        if not hasattr(component, name):
            problems.append(name)
            continue
        problem = _wrong_value(name, getattr(component, name), annotation)
        if problem:
            problems.append(problem)
    for optional in OPTIONAL.get(kind, ()):  # absent is fine; present must be right
        for name, annotation in attributes(optional).items():
            if hasattr(component, name) and (problem := _wrong_value(name, getattr(component, name), annotation)):
                problems.append(problem)
    return problems


def missing_statically(kind: str, factory: Callable[..., Any]) -> list[str]:
    """Methods that the class ``factory`` builds certainly lacks, known without building it.

    Used for formatters, which need a tokenizer to build: a class factory, or a function annotated to return
    a class, is checked for the contract's methods. Data attributes may be set in ``__init__`` and are left
    to build time; a factory whose return type is unknown is not checked here.
    """
    protocol = CONTRACTS.get(kind)
    target = factory if inspect.isclass(factory) else _return_class(factory)
    if protocol is None or target is None:
        return []
    return [name for name in methods(protocol) if not _defines(target, name)]


def _return_class(factory: Callable[..., Any]) -> type | None:
    try:
        annotation = typing.get_type_hints(factory).get("return")
    except Exception:  # an annotation that does not resolve says nothing either way
        return None
    if annotation is Any or not inspect.isclass(annotation):  # ``Any`` is a class from Python 3.11 on
        return None
    return None if getattr(annotation, "_is_protocol", False) else annotation


def _wrong_value(name: str, value: Any, annotation: Any) -> str | None:
    if typing.get_origin(annotation) is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            expected = " or ".join(repr(a) for a in allowed)
            return f"a valid {name} (it is {value!r}; expected {expected})"
    elif typing.get_origin(annotation) is Mapping:
        _, value_type = typing.get_args(annotation)
        if not isinstance(value, Mapping) or not all(isinstance(v, value_type) for v in value.values()):
            return f"a valid {name} (expected a mapping of names to {value_type.__module__}.{value_type.__name__})"
    elif inspect.isclass(annotation) and annotation is not Any and not isinstance(value, annotation):
        return f"a valid {name} (it is a {type(value).__name__}; expected a {annotation.__name__})"
    return None

"""What ``rqa generate`` leaves out, and why: passages not worth asking about, and generated rows not worth keeping.

Passage filters run before any generation. They are a registry kind (``passage_filters``, hook
``register_passage_filters``; built-ins ``short`` and ``boilerplate``), named with ``--filter NAME[:key=value,...]``;
``--filter package.module:function`` still takes a user's own function of a ``Document`` without packaging it as a
plugin. Row checks run on every generated question and answer; the ones that need no choice always run,
``roundtrip`` (it needs the retriever, so it is no passage filter) when named. Every removal is counted under one
reason (``REASONS``, or the passage filter's name), which the summary table and ``generation.json`` report.
"""

from __future__ import annotations

import importlib
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from rqa.contracts import PassageFilter
from rqa.errors import RqaError, UnknownComponentError
from rqa.registry import describe, parse_component_spec, validate_options
from rqa.schema import Document
from rqa.scoring import normalize_answer

KIND = "passage_filters"
ROW_FILTERS = ("roundtrip",)  # --filter names that are options of the run, not passage filters
EMPTY_PASSAGE = "passages without a word"

# reason -> what it means; rows are removed by the first reason that applies, in this order
REASONS: dict[str, str] = {
    "no_question": "the generator gave fewer questions than asked (or none that ends with '?')",
    "overlong_question": "a question longer than --max_question_words",
    "duplicate_text": "the same question (normalised text) as a row already kept",
    "duplicate_embedding": "a near-duplicate (embedding cosine >= --duplicate_threshold) of a row already kept",
    "roundtrip": "the retriever does not rank the question's gold passage in its top --roundtrip_k",
    "empty_answer": "an empty answer",
    "overlong_answer": "an answer longer than --max_answer_words",
    "unanswerable": "an answer saying the passage does not hold the answer",
}

_SOURCE = r"(?:passage|text|document|documents|context|article|information provided|given information)"
_UNANSWERABLE = re.compile(
    "|".join(
        [
            rf"\b(?:the|this|that|provided|given) {_SOURCE} (?:does not|doesn't|do not|don't) "
            r"(?:contain|mention|provide|say|specify|include|state|cover|discuss|address|answer|give)",
            rf"\bnot (?:mentioned|stated|specified|provided|covered|given|found|included|addressed) in the {_SOURCE}",
            rf"\bno (?:information|mention|details?|answer) (?:about|on|regarding|of|to|in the {_SOURCE})",
            r"\b(?:cannot|can't|can not|unable to|not able to) (?:be )?"
            r"(?:answer|determine|find|tell|provide an answer)",
            r"\bnot (?:enough|sufficient) information\b",
            r"\bi (?:don't|do not) know\b",
        ]
    ),
    re.IGNORECASE,
)


@dataclass(frozen=True)
class PassageChoice:
    """One passage filter a run asked for, checked (name, options) but built only once the database is read."""

    name: str  # the reason its removals are counted under
    means: str  # what it removes, for generation.json and the summary table
    build: Callable[[Sequence[Document]], PassageFilter]  # documents -> the filter


@dataclass(frozen=True)
class FilterChoice:
    """The filters a run asked for: passage filters, in order, and whether to round-trip."""

    passage: tuple[PassageChoice, ...]
    roundtrip: bool


def split_specs(values: Sequence[str]) -> list[str]:
    """``--filter`` values (repeatable, comma-separated) into one spec per filter. A ``key=value`` part continues
    the filter before it in the same value: ``short:min_words=20,boilerplate`` is two filters,
    ``boilerplate:max_share=0.6,min_repeats=4`` one."""
    specs: list[str] = []
    for value in values:
        first = len(specs)
        for part in (p.strip() for p in value.split(",")):
            if part and "=" in part and ":" not in part and len(specs) > first:
                specs[-1] += f",{part}"
            elif part:
                specs.append(part)
    return specs


def choose_filters(values: Sequence[str]) -> FilterChoice:
    """``--filter`` values resolved and their options checked, before anything loads; an unknown name lists the
    valid ones (registered passage filters and ``roundtrip``)."""
    from rqa.plugins import get_plugins

    registry = get_plugins()[KIND]
    passage: list[PassageChoice] = []
    roundtrip = False
    for spec in split_specs(values):
        name = spec.partition(":")[0].strip()
        if spec == "roundtrip":
            roundtrip = True
            continue
        if name in registry:
            name, options = parse_component_spec(spec)
            typed = validate_options(registry.get(name), options, context={"documents"})
            means = f"{registry.get(name).description.rstrip('.')} (--filter {spec})"
            choice = PassageChoice(name, means, partial(_build, registry, name, typed))
        elif ":" in spec and "=" not in spec:
            function = _import_filter(spec)
            means = f"{describe(function).rstrip('.') or 'passages it rejects'} (--filter {spec})"
            choice = PassageChoice(spec, means, partial(_as_built, function))
        else:
            raise UnknownComponentError(
                f"--filter: {registry.unknown_message(name, also=ROW_FILTERS)}; or package.module:function "
                "(a function taking a document and returning whether to keep it)"
            )
        if any(c.name == choice.name for c in passage):
            raise RqaError(f"--filter {choice.name} is given twice")
        passage.append(choice)
    return FilterChoice(tuple(passage), roundtrip)


def _build(registry: Any, name: str, options: dict[str, Any], documents: Sequence[Document]) -> PassageFilter:
    return registry.build(name, options, documents=list(documents))


def _as_built(function: PassageFilter, documents: Sequence[Document]) -> PassageFilter:
    return function  # a package.module:function filter judges each passage alone


def _import_filter(spec: str) -> PassageFilter:
    module_name, _, attribute = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise RqaError(f"--filter {spec}: cannot import it ({error})") from None
    if not callable(function):
        raise RqaError(f"--filter {spec}: is not a function")
    return function


def apply_passage_filters(
    documents: Sequence[Document], choice: FilterChoice
) -> tuple[list[int], dict[str, dict[str, Any]]]:
    """Indices of the passages worth asking about, and per reason (empty passages, then each filter in order) how
    many it removed (the first reason that applies) and what it means. Each filter is built here, seeing the whole
    database once."""
    filters = {c.name: c.build(documents) for c in choice.passage}
    kept: list[int] = []
    removed: Counter[str] = Counter()
    for index, document in enumerate(documents):
        reason = "empty_passage" if not normalize_answer(document.page_content) else None
        for name, keep in filters.items():
            if reason is not None:
                break
            try:
                if not keep(document):
                    reason = name
            except Exception as error:
                raise RqaError(f"--filter {name} failed on passage {index}: {type(error).__name__}: {error}") from None
        if reason is None:
            kept.append(index)
        else:
            removed[reason] += 1
    meanings = {"empty_passage": EMPTY_PASSAGE, **{c.name: c.means for c in choice.passage}}
    return kept, {reason: {"removed": removed[reason], "means": means} for reason, means in meanings.items()}


def question_problem(question: str, max_words: int) -> str | None:
    """Why a question is left out on its own (no other rows needed), or None."""
    return "overlong_question" if len(question.split()) > max_words else None


def answer_problem(answer: str, max_words: int) -> str | None:
    """Why an answer is left out: empty, longer than ``max_words``, or saying the passage lacks the answer."""
    if not normalize_answer(answer):
        return "empty_answer"
    if len(answer.split()) > max_words:
        return "overlong_answer"
    if _UNANSWERABLE.search(answer):
        return "unanswerable"
    return None


def question_key(question: str) -> str:
    """The text two questions must share to count as the same question."""
    return normalize_answer(question)

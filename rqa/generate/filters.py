"""What ``rqa generate`` leaves out, and why: passages not worth asking about, and generated rows not worth keeping.

Passage filters run before any generation (``--filter short``, ``--filter boilerplate``, or a user's own function
``--filter package.module:function`` taking a ``Document`` and returning whether to keep it). Row checks run on
every generated question and answer; the ones that need no choice always run, ``roundtrip`` when named. Every
removal is counted under one reason (``REASONS``), which the summary table and ``generation.json`` report.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rqa.errors import RqaError
from rqa.schema import Document
from rqa.scoring import normalize_answer

PassageFilter = Callable[[Document], bool]  # True: keep the passage

SHORT_WORDS = 12  # fewer words than this: a heading, a link list or a stub, not something to ask about
BOILERPLATE_SHARE = 0.5  # a passage most of whose lines recur in other passages is navigation or a footer
BOILERPLATE_REPEATS = 3

PASSAGE_FILTERS = ("short", "boilerplate")
ROW_FILTERS = ("roundtrip",)
FILTER_NAMES = (*PASSAGE_FILTERS, *ROW_FILTERS)

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
PASSAGE_REASONS: dict[str, str] = {
    "empty_passage": "passages without a word",
    "short": f"passages under {SHORT_WORDS} words (--filter short)",
    "boilerplate": "passages most of whose lines recur in other passages (--filter boilerplate)",
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
class FilterChoice:
    """The filters a run asked for: passage filters by name (with their functions) and whether to round-trip."""

    passage: dict[str, PassageFilter]
    roundtrip: bool

    @property
    def names(self) -> list[str]:
        return [*self.passage, *(["roundtrip"] if self.roundtrip else [])]


def choose_filters(specs: Sequence[str]) -> FilterChoice:
    """``--filter`` values (repeatable, comma-separated) resolved; an unknown name lists the valid ones."""
    names = [part.strip() for spec in specs for part in spec.split(",") if part.strip()]
    passage: dict[str, PassageFilter] = {}
    roundtrip = False
    for name in names:
        if name == "roundtrip":
            roundtrip = True
        elif name in PASSAGE_FILTERS:
            passage[name] = _short if name == "short" else _never  # boilerplate needs the database: see apply
        elif ":" in name:
            passage[name] = _import_filter(name)
        else:
            close = difflib.get_close_matches(name, FILTER_NAMES, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RqaError(
                f"unknown --filter '{name}'{hint}; valid filters: {', '.join(FILTER_NAMES)}, "
                "or package.module:function (a function taking a document and returning whether to keep it)"
            )
    return FilterChoice(passage, roundtrip)


def _import_filter(spec: str) -> PassageFilter:
    module_name, _, attribute = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise RqaError(f"--filter {spec}: cannot import it ({error})") from None
    if not callable(function):
        raise RqaError(f"--filter {spec}: is not a function")
    return function


def _short(document: Document) -> bool:
    return len(document.page_content.split()) >= SHORT_WORDS


def _never(document: Document) -> bool:
    return True


def boilerplate_filter(documents: Sequence[Document]) -> PassageFilter:
    """A filter dropping passages most of whose lines occur in ``BOILERPLATE_REPEATS`` or more passages."""
    counts = Counter(line for d in documents for line in {_line_key(x) for x in d.page_content.splitlines()} if line)

    def keep(document: Document) -> bool:
        lines = [key for key in (_line_key(x) for x in document.page_content.splitlines()) if key]
        repeated = sum(counts[key] >= BOILERPLATE_REPEATS for key in lines)
        return not lines or repeated / len(lines) <= BOILERPLATE_SHARE

    return keep


def _line_key(line: str) -> str:
    return " ".join(line.lower().split())


def apply_passage_filters(documents: Sequence[Document], choice: FilterChoice) -> tuple[list[int], Counter[str]]:
    """Indices of the passages worth asking about, and how many each filter (first that applies) removed."""
    filters = dict(choice.passage)
    if "boilerplate" in filters:
        filters["boilerplate"] = boilerplate_filter(documents)
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
    return kept, removed


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

"""Scoring primitives the core needs for every prediction row, whatever metrics are installed.

Evaluation diagnoses each row (was a gold passage retrieved, how close is the answer, is it grounded) with
these; the built-in metrics use the same definitions, so a diagnosis and a metric never disagree.

What a metric's keys mean (headline or not, which way is better, a line for the glossary) comes from the
metrics themselves (``rqa.contracts.SupportsMetadata``); ``run_key_info`` and ``headline_keys`` collect it for
evaluation, the tables ``rqa train`` prints and ``report.png``.
"""

from __future__ import annotations

import logging
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from rqa.contracts import KeyInfo, SupportsMetadata
from rqa.errors import RqaError

Row = dict[str, Any]
log = logging.getLogger("rqa")
HEADLINE_GROUPS = ("gen/", "retr/")  # answer quality first, then whether retrieval found the gold passages


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_prf(prediction: str, reference: str) -> tuple[float, float, float]:
    """Token-overlap precision, recall and F1 after SQuAD normalisation."""
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not gold:
        same = float(predicted == gold)
        return same, same, same
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0, 0.0, 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return precision, recall, 2 * precision * recall / (precision + recall)


def distinct_documents(documents: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``documents`` without repeats (same ``page_content``), first occurrence kept, order kept.

    A gold document retrieved twice must count once: otherwise its repeats add gain to nDCG (which then
    exceeds 1) and inflate accuracy.
    """
    seen: set[str] = set()
    distinct = []
    for document in documents:
        if document["page_content"] not in seen:
            seen.add(document["page_content"])
            distinct.append(document)
    return distinct


def gold_ranks(row: Row) -> list[int]:
    """1-based ranks, among the distinct retrieved documents, of those that are gold."""
    gold = {d["page_content"] for d in row.get("gold_docs", [])}
    retrieved = distinct_documents(row.get("retrieved_docs", []))
    return [i for i, d in enumerate(retrieved, start=1) if d["page_content"] in gold]


def grounding_f1(answer: str, documents: Iterable[dict[str, Any]]) -> float:
    """Best token F1 of ``answer`` against any of ``documents``: how much of the answer a passage supports."""
    return max((token_prf(answer, d["page_content"])[2] for d in documents), default=0.0)


def key_info(metrics: Iterable[Any]) -> dict[str, KeyInfo]:
    """What the keys of these built metrics mean, as each declares it; the first metric to describe a key wins."""
    info: dict[str, KeyInfo] = {}
    for metric in metrics:
        if isinstance(metric, SupportsMetadata):
            for key, about in metric.metadata.items():
                info.setdefault(key, about)
    return info


def run_key_info(factories: Mapping[str, Callable[[], Any]] | None = None, top_k: int = 4) -> dict[str, KeyInfo]:
    """What the keys of a run's metrics mean (``factories`` as ``rqa.pipeline.metric_factories`` makes them).

    Without ``factories`` (a run whose metrics are not known), those of every installed metric: callers show
    only the keys a run logged. A metric that fails to build is left out with a warning.
    """
    if factories is None:
        from rqa.pipeline import metric_factories
        from rqa.plugins import get_plugins

        factories = metric_factories(get_plugins()["metrics"].names(), top_k)
    built = []
    for name, factory in factories.items():
        try:
            built.append(factory())
        except RqaError as error:
            log.warning("metric %s left out of the tables: %s", name, error)
    return key_info(built)


def headline_keys(info: Mapping[str, KeyInfo]) -> list[str]:
    """The keys a run is judged by: answers (``gen/``), then retrieval (``retr/``), then the rest.

    Alphabetical within each group, so the order does not depend on the order metrics were named or installed
    in: the built-ins' ``gen/f1``, ``gen/rougeL``, ``retr/recall@1``, ``retr/recall@K``.
    """
    return sorted((key for key, about in info.items() if about.headline), key=_display_order)


def glossary_keys(info: Mapping[str, KeyInfo]) -> list[str]:
    """The keys with a description: the headline keys first, then the others, in the same order."""
    headline = headline_keys(info)
    others = sorted((key for key in info if key not in headline), key=_display_order)
    return [key for key in [*headline, *others] if info[key].description]


def _display_order(key: str) -> tuple[int, str]:
    group = next((i for i, start in enumerate(HEADLINE_GROUPS) if key.startswith(start)), len(HEADLINE_GROUPS))
    return group, key

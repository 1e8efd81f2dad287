"""Scoring primitives the core needs for every prediction row, whatever metrics are installed.

Evaluation diagnoses each row (was a gold passage retrieved, how close is the answer, is it grounded) with
these; the built-in metrics use the same definitions, so a diagnosis and a metric never disagree.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable
from typing import Any

Row = dict[str, Any]


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

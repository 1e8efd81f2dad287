"""What ``rqa train-retriever`` trains on: checked QA records, mined hard negatives, sentence-transformers datasets.

A passage is always its ``text`` (``fmt_content``), as rqa indexes it, and a question is the string rqa's
retrievers are queried with, so training and retrieval see the same strings. "The same passage" means the same
``page_content``, as in rqa's retrieval metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

from rqa.errors import DataError, RqaError
from rqa.retrieval import DenseFaissRetriever, passage_text
from rqa.schema import Document, Example

log = logging.getLogger("rqa")


def _data_error(example: Example, message: str, field: str) -> DataError:
    path, _, line = example.source.rpartition(":")
    return DataError(path or example.source, int(line) if line.isdigit() else None, message, field=field)


def _is_gold(document: Document, example: Example) -> bool:
    return any(document.page_content == g.page_content or document.text == g.text for g in example.gold_docs)


def check_hard_negatives(examples: Sequence[Example]) -> None:
    """A hard negative that is one of the example's gold passages would teach the model to push the answer away."""
    for example in examples:
        for i, negative in enumerate(example.hard_neg_docs):
            if _is_gold(negative, example):
                raise _data_error(
                    example,
                    "is the same passage as a gold passage of this question: a hard negative must not be gold",
                    f"hard_neg_docs[{i}]",
                )


def check_gold_in_database(examples: Sequence[Example], documents: Sequence[Document], limit: int = 5) -> None:
    """Every gold passage must be retrievable: one missing from the database caps recall below 1 and, in training,
    rewards the model for finding a passage evaluation can never return. Reports up to ``limit`` of them."""
    known = {d.page_content for d in documents}
    problems = [
        str(_data_error(example, "is not in the document database (no passage there has this page_content)", field))
        for example in examples
        for i, gold in enumerate(example.gold_docs)
        if gold.page_content not in known
        for field in [f"gold_docs[{i}]"]
    ]
    if problems:
        more = f"\n… and {len(problems) - limit} more" if len(problems) > limit else ""
        raise RqaError("\n".join(problems[:limit]) + more)


def select_negatives(
    ranked: Iterable[Document], count: int, is_positive: Callable[[Document], bool], taken: Iterable[str] = ()
) -> list[Document]:
    """The first ``count`` passages of a ranking that are not positive (gold, or a copy of gold) and whose
    ``page_content`` is not ``taken`` or already chosen: hard negatives, nearest first.

    Both miners end here: ``train-retriever`` ranks by the question and counts exact copies of any gold passage as
    positive; ``rqa generate`` ranks by the gold passage and counts near-copies too (``rqa.generate.plan``).
    """
    seen = set(taken)
    chosen: list[Document] = []
    for document in ranked:
        if len(chosen) >= count:
            break
        if document.page_content not in seen and not is_positive(document):
            seen.add(document.page_content)
            chosen.append(document)
    return chosen


def mine_hard_negatives(
    examples: Sequence[Example],
    documents: Sequence[Document],
    encoder: Any,
    count: int,
    embed_urls: bool = True,
    retriever: Any = None,
) -> list[Example]:
    """Each example with up to ``count`` more hard negatives: the passages ``encoder`` (or ``retriever``, one built
    over ``documents``) ranks highest for its question that are neither gold nor a copy of a gold passage, after the
    record's own ``hard_neg_docs``.

    sentence-transformers' ``mine_hard_negatives`` knows one positive per row; a question here may have several
    gold passages, and a database may hold a gold passage twice under different titles, so rqa filters itself.
    """
    if count <= 0 or not examples:
        return list(examples)
    if retriever is None:
        retriever = DenseFaissRetriever.in_memory(encoder, documents, embed_urls=embed_urls)
    depth = count + max(len(e.gold_docs) for e in examples) + 8  # room for gold passages and their copies
    hits = retriever.retrieve([e.question for e in examples], depth)
    mined: list[Example] = []
    for example, ranked in zip(examples, hits, strict=True):
        pool = {d.page_content: d for d in example.hard_neg_docs}
        found = select_negatives((d for d, _ in ranked), count, partial(_is_gold, example=example), taken=pool)
        pool.update((d.page_content, d) for d in found)
        mined.append(dataclasses.replace(example, hard_neg_docs=tuple(pool.values())))
    return mined


def training_rows(
    examples: Sequence[Example], hard_neg_ratio: float, seed: int, negatives_per_row: int = 1, embed_urls: bool = True
) -> dict[int, list[dict[str, str]]]:
    """Training rows grouped by how many hard negatives they carry: one row per gold passage, as LocalRQA flattens
    the data; ``hard_neg_ratio`` of the questions (those with hard negatives, chosen at random) carry up to
    ``negatives_per_row`` of them, drawn at random, in columns ``negative`` (one) or ``negative_1``… (several), as
    sentence-transformers' own hard-negative datasets name them. Passages are read as the trained model's
    retrievers will read them (``embed_urls``)."""
    check_hard_negatives(examples)
    rng = random.Random(seed)
    eligible = [i for i, e in enumerate(examples) if e.hard_neg_docs]
    wanted = min(len(eligible), round(hard_neg_ratio * len(examples)))
    chosen = set(rng.sample(eligible, wanted))
    groups: dict[int, list[dict[str, str]]] = {}
    for index, example in enumerate(examples):
        pool = example.hard_neg_docs if index in chosen else ()
        negatives = [passage_text(n, embed_urls) for n in rng.sample(pool, min(negatives_per_row, len(pool)))]
        names = ["negative"] if len(negatives) == 1 else [f"negative_{i}" for i in range(1, len(negatives) + 1)]
        for gold in example.gold_docs:
            positive = passage_text(gold, embed_urls)
            row = {"anchor": example.question, "positive": positive, **dict(zip(names, negatives, strict=True))}
            groups.setdefault(len(negatives), []).append(row)
    return dict(sorted(groups.items(), reverse=True))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def inverse_cloze_rows(
    documents: Sequence[Document], per_passage: int, seed: int, embed_urls: bool = True, keep_rate: float = 0.1
) -> list[dict[str, str]]:
    """Pseudo-questions from the database itself (Lee et al.'s inverse cloze task): a sentence of a passage is the
    anchor and the passage without it the positive (with it in ``keep_rate`` of the rows, so that word overlap
    still counts). Passages of fewer than two sentences of four words or more are skipped."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    for document in documents:
        sentences = [s for s in _SENTENCE_END.split(document.page_content) if len(s.split()) >= 4]
        if len(sentences) < 2:
            continue
        for sentence in rng.sample(sentences, min(per_passage, len(sentences))):
            passage = document
            if rng.random() >= keep_rate:
                passage = dataclasses.replace(
                    document,
                    page_content=document.page_content.replace(sentence, "", 1),
                    fmt_content=document.fmt_content.replace(sentence, "", 1),
                )
            rows.append({"anchor": sentence.strip(), "positive": passage_text(passage, embed_urls)})
    return rows


def training_dataset(groups: dict[int, list[dict[str, str]]]) -> Any:
    """One dataset, or one per number of hard negatives: a column cannot be missing in some rows, so
    sentence-transformers draws each batch from one of them (its multi-dataset sampler, proportionally)."""
    from datasets import Dataset, DatasetDict

    def table(rows: list[dict[str, str]]) -> Any:
        return Dataset.from_dict({key: [row[key] for row in rows] for key in rows[0]})

    if len(groups) == 1:
        return table(next(iter(groups.values())))
    return DatasetDict({f"{count}-hard-negatives" if count else "pairs": table(rows) for count, rows in groups.items()})

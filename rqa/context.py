"""Which passages a training example is shown: its gold passages only (LocalRQA's SFT), or RAFT-style
mixes of gold and distractor passages, so the model learns to answer from retrieved context that is
mostly not gold, as it must at inference.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rqa.schema import Document, Example

Distractors = Callable[[Example], Sequence[Document]]


@dataclass(frozen=True)
class RaftContext:
    """Gold passages plus ``distractors`` others in a shuffled order; gold left out with ``1 - keep_gold``."""

    distractors: int = 3
    keep_gold: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.distractors < 0 or not 0.0 <= self.keep_gold <= 1.0:
            raise ValueError("distractors must be >= 0 and keep_gold within [0, 1]")

    def passages(self, example: Example, index: int, candidates: Sequence[Document]) -> list[Document]:
        rng = random.Random(f"{self.seed}:{index}")  # the same context for an example on every run
        gold = {d.page_content for d in example.gold_docs}
        pool = [d for d in dict.fromkeys(candidates) if d.page_content not in gold]
        chosen = pool[: self.distractors]
        if rng.random() < self.keep_gold or not chosen:
            chosen = [*chosen, *example.gold_docs]
        rng.shuffle(chosen)
        return chosen


def hard_negatives(example: Example) -> Sequence[Document]:
    return example.hard_neg_docs


def retrieved_negatives(retriever: object, examples: Sequence[Example], k: int) -> Distractors:
    """Distractors from the evaluation retriever: the passages it ranks highest for each question."""
    hits = retriever.retrieve([e.question for e in examples], k)  # type: ignore[attr-defined]
    by_question = {id(e): [doc for doc, _ in row] for e, row in zip(examples, hits, strict=True)}
    return lambda example: by_question.get(id(example), [])

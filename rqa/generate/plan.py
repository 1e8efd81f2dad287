"""What ``rqa generate`` will do, fixed by its settings before anything is generated.

The plan is a seeded order of the passages worth asking about. Held-out rows come first, as in LocalRQA: passages
are taken from the top of the order for eval and test (each position's split fixed in advance by a weighted round
robin, so the plan does not change with how many passages are generated at once) until both are full; training rows
then come from every passage the held-out splits did not use. Splits are by passage: a passage's rows all land in
one split, so evaluation never scores a question about a passage the model was trained on. A rerun of the same
command makes the same plan and can continue a stopped run from its work log.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from rqa.errors import RqaError
from rqa.retriever_data import select_negatives
from rqa.schema import Document
from rqa.scoring import normalize_answer

SPLITS = ("train", "eval", "test")
NEAR_COPY = 0.9  # difflib ratio above which two passages are copies of one another, not a hard negative


@dataclass(frozen=True)
class GenerateSettings:
    """Everything that decides a run's rows; its fingerprint tells whether a work log belongs to this run."""

    documents: str
    output_dir: str
    questions_per_passage: int = 2
    num_train: int = 600
    num_eval_test: int = 150
    generator: str = "hf"
    generator_options: tuple[str, ...] = ()
    question_prompt: str | None = None
    answer_prompt: str | None = None
    filters: tuple[str, ...] = ()
    seed: int = 0
    hard_negatives: int = 2
    retriever: str = "dense-faiss"
    retriever_options: tuple[str, ...] = ()
    embedding_model: str | None = None
    index: str | None = None
    roundtrip_k: int = 5
    duplicate_threshold: float = 0.95
    max_question_words: int = 40
    max_answer_words: int = 200
    question_tokens: int = 128
    answer_tokens: int = 256
    batch_size: int = 8
    quiet: bool = field(default=False, compare=False)

    def check(self) -> None:
        """Values that cannot make a data set, reported together."""
        problems = [
            f"--{name} must be at least {low} (got {value})"
            for name, value, low in [
                ("questions_per_passage", self.questions_per_passage, 1),
                ("num_train", self.num_train, 0),
                ("num_eval_test", self.num_eval_test, 0),
                ("hard_negatives", self.hard_negatives, 0),
                ("roundtrip_k", self.roundtrip_k, 1),
                ("max_question_words", self.max_question_words, 1),
                ("max_answer_words", self.max_answer_words, 1),
                ("question_tokens", self.question_tokens, 1),
                ("answer_tokens", self.answer_tokens, 1),
                ("batch_size", self.batch_size, 1),
            ]
            if value < low
        ]
        if self.num_train + self.num_eval_test == 0:
            problems.append("--num_train and --num_eval_test are both 0: there is nothing to generate")
        if not 0 < self.duplicate_threshold <= 1:
            problems.append(f"--duplicate_threshold must be in (0, 1] (got {self.duplicate_threshold})")
        if problems:
            raise RqaError("\n".join(problems))

    def targets(self) -> dict[str, int]:
        """Rows wanted per split; eval and test share ``num_eval_test`` (eval the smaller half, as LocalRQA)."""
        evaluation = self.num_eval_test // 2
        return {"train": self.num_train, "eval": evaluation, "test": self.num_eval_test - evaluation}

    def to_dict(self) -> dict[str, Any]:
        return {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}

    def fingerprint(self, documents_fingerprint: str, prompts: Sequence[str]) -> str:
        """What a work log must match to be continued: the settings (less output and display), data, prompts."""
        data = {k: v for k, v in self.to_dict().items() if k not in ("output_dir", "quiet", "documents", "index")}
        data.update(documents=documents_fingerprint, prompts=list(prompts))
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Plan:
    """Passages (database indices) in the order they are asked about, and each position's held-out split
    (``eval`` or ``test``) should the held-out splits reach it."""

    order: list[int]
    heldout: list[str]
    targets: dict[str, int]


def make_plan(candidates: Sequence[int], targets: dict[str, int], seed: int) -> Plan:
    """The candidate passages shuffled by ``seed``; eval and test alternate in proportion to their targets."""
    if not candidates:
        raise RqaError("no passage is left to ask about: the document database is empty or every passage was filtered")
    order = list(candidates)
    random.Random(seed).shuffle(order)
    heldout = {split: targets.get(split, 0) for split in ("eval", "test")}
    return Plan(order, assign_splits(len(order), heldout), dict(targets))


def assign_splits(count: int, targets: dict[str, int]) -> list[str]:
    """A smooth weighted round robin: every prefix of the sequence holds the splits in about their target shares."""
    weights = {name: targets.get(name, 0) for name in SPLITS if targets.get(name, 0) > 0}
    if not weights:
        return ["eval"] * count  # no held-out rows wanted: the positions are never used as such
    total = sum(weights.values())
    credit = dict.fromkeys(weights, 0)
    splits: list[str] = []
    for _ in range(count):
        for name, weight in weights.items():
            credit[name] += weight
        chosen = max(credit, key=lambda name: credit[name])  # first of the best: SPLITS order breaks ties
        credit[chosen] -= total
        splits.append(chosen)
    return splits


def is_copy(a: Document, b: Document) -> bool:
    """Whether two passages say the same thing: the same text, one inside the other, or nearly the same words."""
    if a.page_content == b.page_content or a.text == b.text:
        return True
    x, y = normalize_answer(a.page_content), normalize_answer(b.page_content)
    if not x or not y or x in y or y in x:
        return True
    matcher = difflib.SequenceMatcher(None, x, y, autojunk=False)
    return (
        matcher.real_quick_ratio() >= NEAR_COPY and matcher.quick_ratio() >= NEAR_COPY and matcher.ratio() >= NEAR_COPY
    )


def mine_negatives(retriever: Any, documents: Sequence[Document], golds: Sequence[int], count: int) -> list[list[int]]:
    """For each gold passage, the ``count`` passages the retriever ranks nearest to it that are neither the gold
    passage nor a copy of it (database indices, nearest first)."""
    if count <= 0 or not golds:
        return [[] for _ in golds]
    position = {d.page_content: i for i, d in enumerate(documents)}
    hits = retriever.retrieve([documents[g].text for g in golds], min(count + 10, len(documents)))
    negatives: list[list[int]] = []
    for gold, ranked in zip(golds, hits, strict=True):
        excluded = partial(_gold_or_unknown, position, documents[gold])
        chosen = select_negatives((document for document, _ in ranked), count, excluded)
        negatives.append([position[document.page_content] for document in chosen])
    return negatives


def _gold_or_unknown(position: dict[str, int], gold: Document, document: Document) -> bool:
    """Not a negative of ``gold``: a copy of it, or a passage without an index in the database."""
    return document.page_content not in position or is_copy(document, gold)

"""``rqa generate``'s job: passages → questions → answers → filtered rows in train/eval/test, resumable.

Two phases walk the plan (``rqa.generate.plan``): ``heldout`` fills eval and test from the top of the order, then
``train`` takes every passage the held-out phase did not record. Passages are taken ``batch_size`` at a time: one
``chat`` call asks the generator for the questions of the whole batch, one more for their answers (an ``openai``
backend sends them concurrently, up to its ``concurrency``). Checks that look at one question alone run as soon
as it exists; checks against the rows already kept (duplicates) and the split's remaining need run when the passage
is admitted, strictly in plan order, so the rows depend on the plan and the generator's replies, not on the batch
size or on where an earlier run stopped. Each admitted passage is one line of the work log
(``rqa.generate.worklog``); the split files are written from the log, atomically, at the end.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rqa.errors import RqaError
from rqa.generate.filters import FilterChoice, answer_problem, question_key, question_problem
from rqa.generate.plan import SPLITS, GenerateSettings, Plan, mine_negatives
from rqa.generate.prompting import Prompts, parse_questions
from rqa.schema import Document

log = logging.getLogger("rqa")
PHASES = {"heldout": ("eval", "test"), "train": ("train",)}
LATE_REASONS = frozenset({"roundtrip", "empty_answer", "overlong_answer", "unanswerable"})  # after duplicates


@dataclass
class Item:
    """One generated question on its way: its answer once asked, its embedding, and why it was removed."""

    question: str
    reason: str | None = None
    answer: str = ""
    vector: Any = None


@dataclass
class Pending:
    """A passage whose questions and answers are generated, waiting to be admitted in plan order."""

    position: int
    passage: int
    split: str
    negatives: list[int]
    items: list[Item]
    missing: int
    seconds: float


@dataclass
class State:
    """What the rows kept so far imply: counts per split, the questions (text and embedding) duplicates are
    checked against, and how many rows each reason removed."""

    targets: dict[str, int]
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    keys: set[str] = field(default_factory=set)
    vectors: Any = None  # [kept, dim] normalised, or None before the first row
    removed: Counter[str] = field(default_factory=Counter)
    resume: dict[str, int] = field(default_factory=lambda: {"heldout": 0, "train": 0})  # next position per phase
    heldout_positions: set[int] = field(default_factory=set)
    surplus: int = 0
    asked: int = 0
    seconds: float = 0.0

    def full(self, split: str) -> bool:
        return self.counts[split] >= self.targets.get(split, 0)

    def done(self, phase: str | None = None) -> bool:
        return all(self.full(split) for split in (PHASES[phase] if phase else SPLITS))

    def near_duplicate(self, vector: Any, threshold: float) -> bool:
        return vector is not None and self.vectors is not None and float((self.vectors @ vector).max()) >= threshold

    def keep(self, question: str, vector: Any) -> None:
        import numpy as np

        self.keys.add(question_key(question))
        if vector is not None:
            row = vector[None, :]
            self.vectors = row if self.vectors is None else np.concatenate([self.vectors, row])


@dataclass
class Job:
    """A run's inputs, built and checked: the data, the plan, the components and the settings."""

    settings: GenerateSettings
    documents: list[Document]
    plan: Plan
    prompts: Prompts
    filters: FilterChoice
    generator: Any
    retriever: Any
    encode: Callable[[Sequence[str]], Any]


def admit(job: Job, state: State, pending: Pending) -> dict[str, Any]:
    """The passage's rows given the rows kept before it: duplicate checks, then the split's remaining need."""
    threshold = job.settings.duplicate_threshold
    rows: list[dict[str, str]] = []
    removed: list[dict[str, str]] = []
    surplus = 0
    for item in pending.items:
        reason = item.reason
        if reason is None or reason in LATE_REASONS:
            if question_key(item.question) in state.keys:
                reason = "duplicate_text"
            elif state.near_duplicate(item.vector, threshold):
                reason = "duplicate_embedding"
        if reason is not None:
            removed.append({"question": item.question, "answer": item.answer, "reason": reason})
        elif state.counts[pending.split] + len(rows) >= state.targets[pending.split]:
            surplus += 1  # the split is full: a fine row, not needed
        else:
            rows.append({"question": item.question, "answer": item.answer})
            state.keep(item.question, item.vector)
    record = {
        "position": pending.position,
        "passage": pending.passage,
        "split": pending.split,
        "negatives": pending.negatives,
        "rows": rows,
        "removed": removed,
        "missing": pending.missing,
        "surplus": surplus,
        "seconds": round(pending.seconds, 4),
    }
    count_record(state, record)
    return record


def count_record(state: State, record: dict[str, Any]) -> None:
    """Add a record's counts to the state (duplicate keys are added by ``keep`` or ``replay``)."""
    state.counts[record["split"]] += len(record["rows"])
    state.removed.update(item["reason"] for item in record["removed"])
    state.removed["no_question"] += record["missing"]
    state.surplus += record["surplus"]
    state.asked += len(record["rows"]) + len(record["removed"]) + record["missing"] + record["surplus"]
    state.seconds += record["seconds"]
    phase = phase_of(record["split"])
    state.resume[phase] = record["position"] + 1
    if phase == "heldout":
        state.heldout_positions.add(record["position"])


def replay(job: Job, records: list[dict[str, Any]], state: State) -> None:
    """Rebuild the state an earlier run of the same settings reached, from its work log."""
    for record in records:
        position, split = record.get("position"), record.get("split")
        phase = phase_of(split) if split in SPLITS else ""
        if (
            not isinstance(position, int)
            or not phase
            or position < state.resume[phase]
            or position >= len(job.plan.order)
            or job.plan.order[position] != record.get("passage")
            or (phase == "heldout" and (job.plan.heldout[position] != split or state.resume["train"] > 0))
            or (phase == "train" and position in state.heldout_positions)
        ):
            raise RqaError(
                f"the work log does not follow this run's plan at position {position}: delete it to start over"
            )
        count_record(state, record)
    questions = [row["question"] for record in records for row in record["rows"]]
    if questions:
        vectors = job.encode(questions)
        for question, vector in zip(questions, vectors, strict=True):
            state.keep(question, vector)


def generate_batch(job: Job, state: State, positions: list[int], splits: list[str]) -> list[Pending]:
    """Questions, one-question checks, embeddings, roundtrip and answers for a batch of plan positions."""
    settings, documents = job.settings, job.documents
    began = time.perf_counter()
    golds = [job.plan.order[p] for p in positions]
    conversations = [job.prompts.question_messages(documents[g].text, settings.questions_per_passage) for g in golds]
    replies = job.generator.chat(conversations, settings.question_tokens)
    per_passage = [parse_questions(reply, settings.questions_per_passage) for reply in replies]
    items = [[Item(q, question_problem(q, settings.max_question_words)) for q in found] for found in per_passage]
    flat = [(g, item) for g, found in zip(golds, items, strict=True) for item in found]
    alive = [(g, item) for g, item in flat if item.reason is None]
    if alive:
        for (_, item), vector in zip(alive, job.encode([item.question for _, item in alive]), strict=True):
            item.vector = vector
            if question_key(item.question) in state.keys:
                item.reason = "duplicate_text"  # already kept before this batch: no need to answer it
            elif state.near_duplicate(vector, settings.duplicate_threshold):
                item.reason = "duplicate_embedding"
    if job.filters.roundtrip:
        alive = [(g, item) for g, item in flat if item.reason is None]
        hits = job.retriever.retrieve([item.question for _, item in alive], settings.roundtrip_k) if alive else []
        for (gold, item), ranked in zip(alive, hits, strict=True):
            if not any(doc.page_content == documents[gold].page_content for doc, _ in ranked):
                item.reason = "roundtrip"
    alive = [(g, item) for g, item in flat if item.reason is None]
    if alive:
        asks = [job.prompts.answer_messages(documents[g].text, item.question) for g, item in alive]
        answers = job.generator.chat(asks, settings.answer_tokens)
        for (_, item), answer in zip(alive, answers, strict=True):
            item.answer = answer.strip()
            item.reason = answer_problem(item.answer, settings.max_answer_words)
    negatives = mine_negatives(job.retriever, documents, golds, settings.hard_negatives)
    seconds = (time.perf_counter() - began) / len(positions)
    return [
        Pending(p, g, split, neg, found, settings.questions_per_passage - len(found), seconds)
        for p, g, split, neg, found in zip(positions, golds, splits, negatives, items, strict=True)
    ]


def split_at(job: Job, phase: str, position: int) -> str:
    return job.plan.heldout[position] if phase == "heldout" else "train"


def phase_of(split: str) -> str:
    return "train" if split == "train" else "heldout"


def next_batch(job: Job, state: State, phase: str, start: int) -> tuple[list[int], int]:
    """Up to ``batch_size`` plan positions of ``phase`` from ``start`` whose split still needs rows, and where
    to go on from."""
    positions: list[int] = []
    position = start
    while len(positions) < job.settings.batch_size and position < len(job.plan.order):
        usable = phase == "heldout" or position not in state.heldout_positions
        if usable and not state.full(split_at(job, phase, position)):
            positions.append(position)
        position += 1
    return positions, position


def has_work(job: Job, state: State) -> bool:
    """Whether a phase still needs rows and has passages left to ask (so the generator is worth loading)."""
    return any(not state.done(phase) and next_batch(job, state, phase, state.resume[phase])[0] for phase in PHASES)


def run_batches(
    job: Job, state: State, append: Callable[[dict[str, Any]], None], advance: Callable[[int], None]
) -> None:
    """Generate and admit passages in plan order, held-out phase first, until the splits are full or the
    passages run out."""
    for phase in PHASES:
        position = state.resume[phase]
        while not state.done(phase):
            positions, position = next_batch(job, state, phase, position)
            if not positions:
                break
            splits = [split_at(job, phase, p) for p in positions]
            for pending in generate_batch(job, state, positions, splits):
                if state.full(pending.split):
                    continue  # filled by an earlier passage of this batch: nothing to write, as if never scheduled
                record = admit(job, state, pending)
                append(record)
                advance(len(record["rows"]))

"""End-to-end evaluation: retrieve from the whole database, generate, score, write predictions.

Used by ``rqa evaluate`` and, at every evaluation step, by ``rqa train``. Retrieval does not change while the
generator trains, so it runs once per evaluator. Generation (``rqa.generation``) is batched over prompts of similar
length, greedy by default, and stops when every row has ended its turn.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rqa.builtin.metrics import gold_ranks, token_prf
from rqa.data import ExampleEncoder
from rqa.files import write_json_atomic, write_jsonl_atomic
from rqa.generation import generate_answers
from rqa.schema import Document, Example

log = logging.getLogger("rqa")
GROUNDED_F1 = 0.5  # an answer whose best token F1 against a retrieved passage reaches this is "grounded"


@dataclass
class Retrieved:
    passages: list[list[tuple[Document, float]]]
    seconds_per_question: float


@dataclass
class E2EEvaluator:
    """Everything needed to score a generator on a QA file end to end."""

    examples: Sequence[Example]
    encoder: ExampleEncoder
    retriever: Any | None
    metrics: dict[str, Any]  # name -> factory() building a fresh Metric
    top_k: int = 4
    max_new_tokens: int = 128
    batch_size: int = 32
    output_dir: Path | None = None
    progress: Callable[[str, int], Any] | None = None
    _retrieved: Retrieved | None = field(default=None, init=False)

    def retrieve(self) -> Retrieved:
        if self._retrieved is None:
            start = time.perf_counter()
            if self.retriever is None:
                hits = [[(d, 1.0) for d in e.gold_docs] for e in self.examples]
            else:
                hits = self.retriever.retrieve([e.question for e in self.examples], self.top_k)
            elapsed = time.perf_counter() - start
            self._retrieved = Retrieved(hits, elapsed / max(len(self.examples), 1))
        return self._retrieved

    def generate(self, model: Any, prompts: Sequence[list[int]]) -> tuple[list[str], list[float]]:
        """Greedy answers for token-id prompts, and the seconds spent per question."""
        from rich.progress import Progress

        with Progress(transient=True) as progress:
            task = progress.add_task("generating answers", total=len(prompts))
            return generate_answers(
                model,
                self.encoder.tokenizer,
                prompts,
                end_of_turn=self.encoder.formatter.end_of_turn,
                max_new_tokens=self.max_new_tokens,
                batch_size=self.batch_size,
                progress=lambda done: progress.advance(task, done),
            )

    def evaluate_model(self, model: Any, name: str = "final", is_main: bool = True) -> dict[str, float]:
        """Score ``model``; under several processes each rank answers its share and all see every row."""
        retrieved = self.retrieve()
        rank, world = distributed_rank_and_size()
        mine = list(range(rank, len(self.examples), world))
        prompts = [self.encoder.prompt_ids(self.examples[i], [doc for doc, _ in retrieved.passages[i]]) for i in mine]
        answers, generation_seconds = self.generate(model, prompts)
        local_rows = [
            (i, prediction_row(self.examples[i], retrieved.passages[i], answer, retrieved.seconds_per_question, sec))
            for i, answer, sec in zip(mine, answers, generation_seconds, strict=True)
        ]
        rows = [row for _, row in sorted(gather_from_ranks(local_rows, world), key=lambda pair: pair[0])]
        scores = score_rows(rows, self.metrics)
        if is_main and self.output_dir is not None:
            write_results(self.output_dir, name, rows, scores)
        return scores


def distributed_rank_and_size() -> tuple[int, int]:
    try:
        import torch.distributed as dist
    except ImportError:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_from_ranks(items: list[Any], world: int) -> list[Any]:
    """Every rank's items, on every rank (a no-op in a single process)."""
    if world == 1:
        return items
    import torch.distributed as dist

    gathered: list[list[Any] | None] = [None] * world
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in (part or [])]


def write_results(output_dir: Path, name: str, rows: list[dict[str, Any]], scores: dict[str, float]) -> None:
    """``{name}-predictions.jsonl`` and ``{name}-metrics.json`` (no prefix when name is empty)."""
    prefix = f"{name}-" if name else ""
    write_jsonl_atomic(output_dir / f"{prefix}predictions.jsonl", rows)
    write_json_atomic(output_dir / f"{prefix}metrics.json", scores)


def evaluate_retrieval_only(
    examples: Sequence[Example], retriever: Any, metrics: dict[str, Any], top_k: int, output_dir: Path
) -> dict[str, float]:
    start = time.perf_counter()
    hits = retriever.retrieve([e.question for e in examples], top_k)
    per_question = (time.perf_counter() - start) / max(len(examples), 1)
    rows = [prediction_row(e, h, "", per_question, 0.0) for e, h in zip(examples, hits, strict=True)]
    scores = score_rows(rows, metrics)
    write_results(output_dir, "", rows, scores)
    return scores


def prediction_row(
    example: Example,
    hits: list[tuple[Document, float]],
    answer: str,
    retrieval_seconds: float,
    generation_seconds: float,
) -> dict[str, Any]:
    retrieved = [{**doc.to_dict(), "score": score} for doc, score in hits]
    row: dict[str, Any] = {
        "question": example.question,
        "chat_history": [{"role": t.role, "content": t.content} for t in example.chat_history],
        "gold_answer": example.gold_answer,
        "generated_answer": answer,
        "gold_docs": [d.to_dict() for d in example.gold_docs],
        "retrieved_docs": retrieved,
        "latency": {
            "retrieval_ms": retrieval_seconds * 1000,
            "generation_s": generation_seconds,
            "e2e_s": retrieval_seconds + generation_seconds,
        },
    }
    grounding = max((token_prf(answer, d["page_content"])[2] for d in retrieved), default=0.0)
    row["diagnosis"] = {
        "retrieval_hit": bool(gold_ranks(row)),
        "answer_f1": token_prf(answer, example.gold_answer)[2],
        "grounded": grounding >= GROUNDED_F1,
    }
    return row


def score_rows(rows: list[dict[str, Any]], metrics: dict[str, Any]) -> dict[str, float]:
    scores: dict[str, float] = {}
    for factory in metrics.values():
        metric = factory()
        metric.update(rows)
        scores.update(metric.compute())
    hits = [r for r in rows if r["diagnosis"]["retrieval_hit"]]
    if rows and "gen/f1" in scores:  # where errors come from: retrieval misses or the generator
        misses = [r for r in rows if not r["diagnosis"]["retrieval_hit"]]
        for label, subset in (("hit", hits), ("miss", misses)):
            if subset:
                values = [r["diagnosis"]["answer_f1"] for r in subset]
                scores[f"gen/f1|retrieval_{label}"] = sum(values) / len(values)
    scores.update(bootstrap_intervals(rows, metrics))
    scores["count/questions"] = float(len(rows))
    scores["count/retrieval_hits"] = float(len(hits))
    return scores


def is_headline(key: str) -> bool:
    return key in ("gen/f1", "gen/rougeL") or (key.startswith("retr/recall@") and key != "retr/recall@1")


def bootstrap_intervals(
    rows: list[dict[str, Any]], metrics: dict[str, Any], resamples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """95 % bootstrap intervals of the headline metrics (eval sets are small): ``ci95_low/NAME``, ``ci95_high/NAME``."""
    import numpy as np

    if len(rows) < 2:
        return {}
    per_row: dict[str, list[float]] = {}
    for factory in metrics.values():
        metric = factory()
        if not hasattr(metric, "per_row"):
            continue
        for row in rows:
            for key, value in metric.per_row(row).items():
                if is_headline(key):
                    per_row.setdefault(key, []).append(value)
    generator = np.random.default_rng(seed)
    picks = generator.integers(0, len(rows), size=(resamples, len(rows)))
    intervals: dict[str, float] = {}
    for key, values in per_row.items():
        means = np.asarray(values)[picks].mean(axis=1)
        intervals[f"ci95_low/{key}"] = float(np.percentile(means, 2.5))
        intervals[f"ci95_high/{key}"] = float(np.percentile(means, 97.5))
    return intervals

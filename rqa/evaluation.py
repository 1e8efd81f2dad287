"""End-to-end evaluation: retrieve from the whole database, generate, score, write predictions.

Used by ``rqa evaluate`` and, at every evaluation step, by ``rqa train``. Retrieval does not change while the
generator trains, so it runs once per evaluator. Generation (``rqa.generation``) is batched over prompts of similar
length, greedy by default, and stops when every row has ended its turn.

Under several processes each rank answers its share of the questions and every rank sees every row. The ranks run
in lockstep (``rqa.generation.lockstep_batches``): as many batches, rows, forward and ``generate`` calls on each,
because under FSDP or DeepSpeed ZeRO-3 every forward gathers weights from all ranks, and a rank making one call
fewer would leave the others waiting forever.

A ``StopFlag`` (SIGTERM while training: ``rqa.signals``) abandons an evaluation between retrieval chunks, prompts,
decode segments and batches: it raises ``StopRequested`` and writes nothing.

An evaluation takes minutes: the main process draws bars for retrieval and generation on a terminal, and logs one
line with the rate when it ends (``rqa.progress``); ``quiet`` (``--disable_tqdm true``) leaves only that line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rqa.contracts import SupportsPerRow
from rqa.data import ExampleEncoder
from rqa.files import write_json_atomic, write_jsonl_atomic
from rqa.generation import RankBatches, generate_answers, lockstep_batches, padding_allowed
from rqa.progress import Advance, log_finished, progress_bars
from rqa.schema import Document, Example
from rqa.scoring import gold_ranks, grounding_f1, headline_keys, key_info, token_prf

if TYPE_CHECKING:
    from rqa.signals import StopFlag

log = logging.getLogger("rqa")
GROUNDED_F1 = 0.5  # an answer whose best token F1 against a retrieved passage reaches this is "grounded"
RETRIEVAL_CHUNK = 128  # questions retrieved at a time when a stop may abandon the evaluation


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
    quiet: bool = False  # no progress bar, only the line logged when an evaluation ends (``rqa.progress``)
    _retrieved: Retrieved | None = field(default=None, init=False)

    def retrieve(
        self,
        stop: StopFlag | None = None,
        synced: bool = False,
        device: Any = None,
        progress: Advance | None = None,
    ) -> Retrieved:
        """Every question's passages, once per evaluator; with ``stop``, in chunks that a stop abandons.

        ``progress`` is told how many questions each retriever call answered (the chunks do not depend on it).
        """
        if self._retrieved is None:
            start = time.perf_counter()
            questions = [e.question for e in self.examples]
            if self.retriever is None:
                hits = [[(d, 1.0) for d in e.gold_docs] for e in self.examples]
            elif stop is None:
                hits = self.retriever.retrieve(questions, self.top_k)
                if progress is not None:
                    progress(len(hits))
            else:
                hits = []
                for begin in range(0, len(questions), RETRIEVAL_CHUNK):
                    stop.check(synced, device)
                    chunk = self.retriever.retrieve(questions[begin : begin + RETRIEVAL_CHUNK], self.top_k)
                    hits += chunk
                    if progress is not None:
                        progress(len(chunk))
            elapsed = time.perf_counter() - start
            self._retrieved = Retrieved(hits, elapsed / max(len(self.examples), 1))
        return self._retrieved

    def generate(
        self,
        model: Any,
        prompts: Sequence[list[int]],
        batches: list[list[int]] | None = None,
        synced: bool = False,
        stop: StopFlag | None = None,
        progress: Advance | None = None,
    ) -> tuple[list[str], list[float]]:
        """Greedy answers for token-id prompts, and the seconds spent per question (see ``generate_answers``).

        ``progress`` is told each batch's row count when the batch is done.
        """
        return generate_answers(
            model,
            self.encoder.tokenizer,
            prompts,
            end_of_turn=self.encoder.formatter.end_of_turn,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            progress=progress,
            batches=batches,
            synced=synced,
            stop=stop,
        )

    def evaluate_model(
        self, model: Any, name: str = "final", is_main: bool = True, stop: StopFlag | None = None
    ) -> dict[str, float]:
        """Score ``model``; under several processes each rank answers its share, in lockstep, and all see every row.

        A stop asked for through ``stop`` raises ``StopRequested`` before anything is written. The main process
        shows progress (``rqa.progress``) and logs one line with the rate when the evaluation ends.
        """
        rank, world = distributed_rank_and_size()
        synced = world > 1
        device = next(model.parameters()).device
        began = time.perf_counter()
        label = f"evaluation {name}".strip()
        with progress_bars(quiet=self.quiet, main=is_main) as bars:
            retrieving = None
            if self._retrieved is None and self.retriever is not None:
                retrieving = bars.add(f"{label}: retrieving passages", len(self.examples), "questions")
            retrieved = self.retrieve(stop, synced, device, retrieving)
            if is_main:
                log.info("%s: generating answers to %d questions", label, len(self.examples))
            # every prompt on every rank: the lockstep batches are planned from all their lengths
            prompts = [self.prompt(i, retrieved) for i in range(len(self.examples))]
            mine, batches = list(range(len(prompts))), None
            progress = bars.add(f"{label}: generating answers", len(prompts), "answers")
            if synced:
                parts = lockstep_batches([len(p) for p in prompts], self.batch_size, world, padding_allowed(model))
                mine, batches = parts[rank].owned, parts[rank].batches
                progress = lockstep_progress(parts, progress)
            answers, seconds = self.generate(model, prompts, batches, synced, stop, progress)
        per_question = retrieved.seconds_per_question
        local_rows = [
            (i, prediction_row(self.examples[i], retrieved.passages[i], answers[i], per_question, seconds[i]))
            for i in mine
        ]
        rows = [row for _, row in sorted(gather_from_ranks(local_rows, world), key=lambda pair: pair[0])]
        scores = score_rows(rows, self.metrics)
        if is_main and self.output_dir is not None:
            write_results(self.output_dir, name, rows, scores)
        if is_main:
            log_finished(label, len(self.examples), "questions", "answered", time.perf_counter() - began)
        return scores

    def prompt(self, index: int, retrieved: Retrieved) -> list[int]:
        """The token ids question ``index`` is answered from, its retrieved passages included."""
        return self.encoder.prompt_ids(self.examples[index], [doc for doc, _ in retrieved.passages[index]])


def lockstep_progress(parts: Sequence[RankBatches], advance: Advance) -> Advance:
    """Progress over every rank's questions, fed with one rank's batch sizes.

    The ranks finish their n-th batches together, so after this rank's n-th batch all ranks have answered the
    distinct questions of their n-th batches (the repeats that fill a short share count once).
    """
    answered = iter([len(set().union(*(part.batches[n] for part in parts))) for n in range(len(parts[0].batches))])
    return lambda rows: advance(next(answered, 0))


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
    examples: Sequence[Example],
    retriever: Any,
    metrics: dict[str, Any],
    top_k: int,
    output_dir: Path,
    quiet: bool = False,
) -> dict[str, float]:
    """Score the retriever alone; progress as for a whole evaluation (``rqa.progress``)."""
    start = time.perf_counter()
    with progress_bars(quiet=quiet) as bars:
        retrieving = bars.add("evaluation: retrieving passages", len(examples), "questions")
        hits = retriever.retrieve([e.question for e in examples], top_k)
        retrieving(len(hits))
    per_question = (time.perf_counter() - start) / max(len(examples), 1)
    rows = [prediction_row(e, h, "", per_question, 0.0) for e, h in zip(examples, hits, strict=True)]
    scores = score_rows(rows, metrics)
    write_results(output_dir, "", rows, scores)
    log_finished("evaluation", len(examples), "questions", "retrieved", time.perf_counter() - start)
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
    row["diagnosis"] = {
        "retrieval_hit": bool(gold_ranks(row)),
        "answer_f1": token_prf(answer, example.gold_answer)[2],
        "grounded": grounding_f1(answer, retrieved) >= GROUNDED_F1,
    }
    return row


def score_rows(rows: list[dict[str, Any]], metrics: dict[str, Any]) -> dict[str, float]:
    """Every metric's values, then what the metrics ask for in their ``metadata`` (``rqa.contracts.KeyInfo``):
    means over retrieval hits and misses, and 95 % bootstrap intervals of the headline keys; then the counts.
    """
    built = [factory() for factory in metrics.values()]
    scores: dict[str, float] = {}
    for metric in built:
        metric.update(rows)
        scores.update(metric.compute())
    info = key_info(built)
    split = [key for key, about in info.items() if about.by_retrieval and key in scores]
    headline = [key for key in headline_keys(info) if key in scores]
    values = per_row_values(rows, built, {*split, *headline})
    hit = [r["diagnosis"]["retrieval_hit"] for r in rows]
    for key in (key for key in split if key in values):  # where errors come from: retrieval or the generator
        for label, wanted in (("hit", True), ("miss", False)):
            subset = [value for value, found in zip(values[key], hit, strict=True) if found is wanted]
            if subset:
                scores[f"{key}|retrieval_{label}"] = sum(subset) / len(subset)
    scores.update(bootstrap_intervals({key: values[key] for key in headline if key in values}))
    scores["count/questions"] = float(len(rows))
    scores["count/retrieval_hits"] = float(sum(hit))
    return scores


def per_row_values(rows: list[dict[str, Any]], metrics: Sequence[Any], keys: set[str]) -> dict[str, list[float]]:
    """Each row's value of ``keys``, from the metrics that describe them and give values per row (optional)."""
    values: dict[str, list[float]] = {}
    for metric in metrics:
        wanted = keys.intersection(key_info([metric])) - values.keys()
        if not wanted or not isinstance(metric, SupportsPerRow):
            continue
        columns: dict[str, list[float | None]] = {key: [] for key in wanted}
        for row in rows:
            scores = metric.per_row(row)
            for key in wanted:
                columns[key].append(scores.get(key))
        values.update({key: column for key, column in columns.items() if None not in column})  # type: ignore[misc]
    return values


def bootstrap_intervals(per_row: dict[str, list[float]], resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """95 % bootstrap intervals of per-row values (eval sets are small): ``ci95_low/NAME``, ``ci95_high/NAME``."""
    import numpy as np

    rows = len(next(iter(per_row.values()), []))
    if rows < 2:
        return {}
    generator = np.random.default_rng(seed)
    picks = generator.integers(0, rows, size=(resamples, rows))
    intervals: dict[str, float] = {}
    for key, values in per_row.items():
        means = np.asarray(values)[picks].mean(axis=1)
        intervals[f"ci95_low/{key}"] = float(np.percentile(means, 2.5))
        intervals[f"ci95_high/{key}"] = float(np.percentile(means, 97.5))
    return intervals

"""Built-in metrics over prediction rows.

A row holds ``question``, ``gold_answer``, ``generated_answer``, ``gold_docs`` and ``retrieved_docs``
(documents as dicts), plus per-question latencies. A document counts as gold when its ``page_content``
matches a gold document's exactly; by the same rule, a document a retriever returns twice is one document, so
retrieval metrics rank the distinct retrieved documents. ROUGE comes from ``rouge-score`` and BLEU from
``sacrebleu``.

Each metric says what its keys mean (``metadata``: ``rqa.contracts.KeyInfo`` by key): the headline keys,
which way is better, the glossary's lines.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from rqa.contracts import KeyInfo
from rqa.hookspecs import hookimpl
from rqa.scoring import distinct_documents, gold_ranks, grounding_f1, token_prf

Row = dict[str, Any]


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


class Metric:
    """Accumulates rows; a subclass writes ``per_row`` (``compute`` then averages it over the rows), or
    ``compute`` itself.

    ``per_row`` is optional (``rqa.contracts.SupportsPerRow``): evaluation's bootstrap intervals need one
    score per row, so a metric without it reports its values without ``ci95_*`` intervals. It is only
    declared here, not defined, so that ``hasattr(metric, "per_row")`` tells the truth. ``metadata``
    (``rqa.contracts.SupportsMetadata``) is optional in the same way.
    """

    per_row: Callable[[Row], dict[str, float]]
    metadata: Mapping[str, KeyInfo]

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def update(self, rows: Iterable[Row]) -> None:
        self.rows.extend(rows)

    def compute(self) -> dict[str, float]:
        if not hasattr(self, "per_row"):
            raise NotImplementedError(f"{type(self).__name__} must define per_row or compute")
        scores = [self.per_row(row) for row in self.rows]
        keys = scores[0].keys() if scores else []
        return {key: _mean(s[key] for s in scores) for key in keys}


class RetrievalMetric(Metric):
    """Scores the distinct retrieved documents (repeats dropped, the first rank kept): each gold document counts
    once, so nDCG stays within 0-1, and ranks, recall and mrr are those of the list without repeats. Accuracy is
    the share of the distinct retrieved documents that are gold: retrieving [g, g, x, y] scores 1/3, not 2/4.
    """

    def __init__(self, k: int = 4) -> None:
        super().__init__()
        self.k = k
        first = "share of questions whose gold passage is the first one retrieved"
        recall = {"retr/recall@1": KeyInfo(first, headline=True)}
        if k != 1:
            every = f"share of questions whose every gold passage is among the {k} retrieved"
            recall[f"retr/recall@{k}"] = KeyInfo(every, headline=True)
        self.metadata = {
            **recall,
            "retr/accuracy": KeyInfo("share of the retrieved passages that are gold"),
            f"retr/ndcg@{k}": KeyInfo(),
            "retr/mrr": KeyInfo(),
        }

    def per_row(self, row: Row) -> dict[str, float]:
        gold = {d["page_content"] for d in row.get("gold_docs", [])}
        retrieved = distinct_documents(row.get("retrieved_docs", []))
        ranks = gold_ranks(row)
        found_at = {retrieved[r - 1]["page_content"]: r for r in ranks}

        def recall_at(k: int) -> float:
            return float(bool(gold) and all(found_at.get(g, math.inf) <= k for g in gold))

        dcg = sum(1 / math.log2(r + 1) for r in ranks if r <= self.k)
        ideal = sum(1 / math.log2(i + 1) for i in range(1, min(len(gold), self.k) + 1))
        return {
            "retr/recall@1": recall_at(1),
            f"retr/recall@{self.k}": recall_at(self.k),
            "retr/accuracy": len(ranks) / len(retrieved) if retrieved else 0.0,
            f"retr/ndcg@{self.k}": dcg / ideal if ideal else 0.0,
            "retr/mrr": 1 / ranks[0] if ranks else 0.0,
        }


class TokenF1Metric(Metric):
    metadata: Mapping[str, KeyInfo] = {
        "gen/f1": KeyInfo("token overlap with the gold answer (SQuAD-normalised)", headline=True, by_retrieval=True),
        "gen/precision": KeyInfo(),
        "gen/recall": KeyInfo(),
    }

    def per_row(self, row: Row) -> dict[str, float]:
        precision, recall, f1 = token_prf(row["generated_answer"], row["gold_answer"])
        return {"gen/f1": f1, "gen/precision": precision, "gen/recall": recall}


class GroundingMetric(Metric):
    metadata: Mapping[str, KeyInfo] = {"gen/f1_retrieved": KeyInfo()}

    def per_row(self, row: Row) -> dict[str, float]:
        return {"gen/f1_retrieved": grounding_f1(row["generated_answer"], row.get("retrieved_docs", []))}


class RougeMetric(Metric):
    metadata: Mapping[str, KeyInfo] = {
        "gen/rouge1": KeyInfo(),
        "gen/rouge2": KeyInfo(),
        "gen/rougeL": KeyInfo("longest common word sequence with the gold answer (ROUGE-L F-measure)", headline=True),
    }

    def __init__(self, use_stemmer: bool = True) -> None:
        super().__init__()
        from rouge_score import rouge_scorer

        self.scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=use_stemmer)

    def per_row(self, row: Row) -> dict[str, float]:
        scores = self.scorer.score(row["gold_answer"], row["generated_answer"])
        return {f"gen/{name}": score.fmeasure for name, score in scores.items()}


class BleuMetric(Metric):
    """Corpus BLEU from sacrebleu, scaled to 0-1 like the other metrics."""

    metadata: Mapping[str, KeyInfo] = {"gen/bleu": KeyInfo()}

    def per_row(self, row: Row) -> dict[str, float]:
        import sacrebleu

        score = sacrebleu.sentence_bleu(row["generated_answer"], [row["gold_answer"]]).score
        return {"gen/bleu": score / 100}

    def compute(self) -> dict[str, float]:
        import sacrebleu

        if not self.rows:
            return {"gen/bleu": 0.0}
        hypotheses = [r["generated_answer"] for r in self.rows]
        references = [[r["gold_answer"] for r in self.rows]]
        return {"gen/bleu": sacrebleu.corpus_bleu(hypotheses, references).score / 100}


class AnswerLengthMetric(Metric):
    metadata: Mapping[str, KeyInfo] = {"gen/answer_words": KeyInfo(higher_is_better=None)}

    def per_row(self, row: Row) -> dict[str, float]:
        return {"gen/answer_words": float(len(row["generated_answer"].split()))}


class LatencyMetric(Metric):
    """Means of the per-question latencies each prediction row carries (``rqa.evaluation.prediction_row``).

    Questions are not timed one by one: retrieval runs once over the whole question set (once per evaluation
    set, so every evaluation step of a training run reports that first measurement) and generation runs in
    batches, so a row's ``retrieval_ms`` is that retrieval's time ÷ the number of questions, in milliseconds;
    its ``generation_s`` is its batch's generation time ÷ the batch's size, in seconds; its ``e2e_s`` is the
    sum of the two, in seconds (generation is 0 with ``--retrieval_only``).
    """

    KEYS = ("retrieval_ms", "generation_s", "e2e_s")
    metadata: Mapping[str, KeyInfo] = {f"latency/{key}": KeyInfo(higher_is_better=False) for key in KEYS}

    def per_row(self, row: Row) -> dict[str, float]:
        latency = row.get("latency", {})
        return {f"latency/{key}": float(latency.get(key, 0.0)) for key in self.KEYS}


def retrieval(top_k: int = 4) -> Metric:
    """retr/recall@1, recall@K, accuracy, ndcg@K, mrr (K = --top_k), a document retrieved twice counted once."""
    return RetrievalMetric(k=top_k)


def token_f1() -> Metric:
    """gen/f1, gen/precision, gen/recall: SQuAD-style token overlap with the gold answer."""
    return TokenF1Metric()


def rouge(use_stemmer: bool = True) -> Metric:
    """gen/rouge1, gen/rouge2, gen/rougeL F-measures (rouge-score)."""
    return RougeMetric(use_stemmer=use_stemmer)


def bleu() -> Metric:
    """gen/bleu: corpus BLEU (sacrebleu), 0-1."""
    return BleuMetric()


def grounding() -> Metric:
    """gen/f1_retrieved: best token F1 of the answer against any retrieved passage."""
    return GroundingMetric()


def answer_length() -> Metric:
    """gen/answer_words: mean words per generated answer."""
    return AnswerLengthMetric()


def latency() -> Metric:
    """latency/retrieval_ms: retrieval of all questions ÷ count; generation_s: batch ÷ its size; e2e_s: the sum.

    Per-question shares of batched work, not single-question timings; see ``LatencyMetric``.
    """
    return LatencyMetric()


@hookimpl
def register_metrics(register) -> None:
    register("retrieval", retrieval)
    register("token-f1", token_f1)
    register("rouge", rouge)
    register("bleu", bleu)
    register("grounding", grounding)
    register("answer-length", answer_length)
    register("latency", latency)

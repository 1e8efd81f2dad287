"""``rqa train-retriever``: contrastive fine-tuning of the embedding model on the QA files.

sentence-transformers does the training (``SentenceTransformerTrainer``, its no-duplicates batch sampler, the loss
from rqa's retriever-loss registry). What rqa adds: LocalRQA's data and flags (one training row per gold passage,
a share of rows with a hard negative checked against the gold), and evaluation the way the embedder is used:
retrieving from the *whole* document database with rqa's own dense retriever and scoring with rqa's retrieval
metric, written as ``eval/step-N-*`` files like ``rqa train`` writes them.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rqa.errors import DataError, RqaError
from rqa.evaluation import prediction_row, score_rows, write_results
from rqa.files import write_json_atomic
from rqa.schema import Document, Example

if TYPE_CHECKING:
    from rqa.retriever_config import RqaRetrieverTrainingArguments

log = logging.getLogger("rqa")
POOLING_MODES = {"mean": "mean", "cls": "cls", "last": "lasttoken"}  # LocalRQA's names -> sentence-transformers'

try:  # sentence-transformers 6 moved its evaluators; the old path still works there, with a warning
    from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator
except ImportError:
    from sentence_transformers.evaluation import SentenceEvaluator


def check_hard_negatives(examples: Sequence[Example]) -> None:
    """A hard negative that is one of the example's gold passages would teach the model to push the answer away."""
    for example in examples:
        gold_contents = {d.page_content for d in example.gold_docs}
        gold_texts = {d.text for d in example.gold_docs}
        for i, negative in enumerate(example.hard_neg_docs):
            if negative.page_content in gold_contents or negative.text in gold_texts:
                path, _, line = example.source.rpartition(":")
                raise DataError(
                    path or example.source,
                    int(line) if line.isdigit() else None,
                    "is the same passage as a gold passage of this question: a hard negative must not be gold",
                    field=f"hard_neg_docs[{i}]",
                )


def training_rows(
    examples: Sequence[Example], hard_neg_ratio: float, seed: int
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(pairs, triplets): one row per gold passage, as LocalRQA flattens the data; ``hard_neg_ratio`` of the questions
    (those with hard negatives first chosen at random) also carry one hard negative, in the triplets.

    The question is the anchor exactly as rqa's retrievers are queried with it, and a passage is its ``text``
    (``fmt_content``), as it is indexed, so training and retrieval see the same strings.
    """
    check_hard_negatives(examples)
    rng = random.Random(seed)
    eligible = [i for i, e in enumerate(examples) if e.hard_neg_docs]
    wanted = min(len(eligible), round(hard_neg_ratio * len(examples)))
    chosen = set(rng.sample(eligible, wanted))
    pairs: list[dict[str, str]] = []
    triplets: list[dict[str, str]] = []
    for index, example in enumerate(examples):
        negative = rng.choice(example.hard_neg_docs).text if index in chosen else None
        for gold in example.gold_docs:
            if negative is None:
                pairs.append({"anchor": example.question, "positive": gold.text})
            else:
                triplets.append({"anchor": example.question, "positive": gold.text, "negative": negative})
    return pairs, triplets


def training_dataset(pairs: list[dict[str, str]], triplets: list[dict[str, str]]) -> Any:
    """One dataset, or two when only some rows have a hard negative: a column cannot be missing in some rows,
    so sentence-transformers draws each batch from one of them (its multi-dataset sampler, proportionally)."""
    from datasets import Dataset, DatasetDict

    def table(rows: list[dict[str, str]]) -> Any:
        return Dataset.from_dict({key: [row[key] for row in rows] for key in rows[0]})

    if pairs and triplets:
        return DatasetDict({"hard-negatives": table(triplets), "pairs": table(pairs)})
    return table(pairs or triplets)


def load_embedder(name_or_path: str | None, pooling_type: str | None) -> Any:
    """A SentenceTransformer; a plain Hugging Face encoder gets LocalRQA's ``--pooling_type`` pooling (mean)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import is_sentence_transformer_model

    from rqa.models import resolve_embedder

    path = resolve_embedder(name_or_path)
    if is_sentence_transformer_model(path, local_files_only=Path(path).is_dir()):
        if pooling_type is not None:
            log.warning(
                "--pooling_type %s ignored: %s is a sentence-transformers model with its own", pooling_type, path
            )
        return SentenceTransformer(path)
    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers.models import Pooling, Transformer

    encoder = Transformer(path)
    dimension = getattr(encoder, "get_embedding_dimension", None) or encoder.get_word_embedding_dimension
    pooling = Pooling(dimension(), pooling_mode=POOLING_MODES[pooling_type or "mean"])
    return SentenceTransformer(modules=[encoder, pooling])


class DatabaseRetrievalEvaluator(SentenceEvaluator):
    """Retrieves every question's top k from the whole database with the model being trained, scores it with rqa's
    retrieval metric, and writes ``{name}-predictions.jsonl`` and ``{name}-metrics.json``.

    sentence-transformers' own ``InformationRetrievalEvaluator`` takes a corpus and relevance ids; this one uses
    rqa's ``DenseFaissRetriever`` (indexed in memory each time) and rqa's metric and files, so a training run's
    numbers are those ``rqa evaluate --retrieval_only`` reports for the saved model.
    """

    def __init__(
        self, examples: Sequence[Example], documents: Sequence[Document], top_k: int, metrics: dict[str, Any]
    ) -> None:
        super().__init__()
        self.examples, self.documents, self.top_k, self.metrics = list(examples), list(documents), top_k, metrics
        self.primary_metric = f"retr/recall@{top_k}"
        self.greater_is_better = True

    def __call__(
        self, model: Any, output_path: str | None = None, epoch: float = -1, steps: int = -1
    ) -> dict[str, float]:
        return self.score(model, f"step-{max(steps, 0)}", Path(output_path) if output_path else None)

    def score(self, model: Any, name: str, output_dir: Path | None) -> dict[str, float]:
        from rqa.retrieval import DenseFaissRetriever

        retriever = DenseFaissRetriever("dense-faiss", "model in training", encoder=model)
        retriever.documents = self.documents
        retriever.index(self.documents, progress=False)
        start = time.perf_counter()
        hits = retriever.retrieve([e.question for e in self.examples], self.top_k)
        per_question = (time.perf_counter() - start) / max(len(self.examples), 1)
        rows = [prediction_row(e, h, "", per_question, 0.0) for e, h in zip(self.examples, hits, strict=True)]
        scores = score_rows(rows, self.metrics)
        if output_dir is not None:
            write_results(output_dir, name, rows, scores)
        log.info("%s: %s %.3f", name, self.primary_metric, scores.get(self.primary_metric, float("nan")))
        return scores


def _read_inputs(args: RqaRetrieverTrainingArguments) -> tuple[dict[str, Any], Any]:
    """Every file and the loss, checked before any model loads; all problems reported at once."""
    from rqa.pipeline import choose, choose_all
    from rqa.schema import read_documents, read_examples

    if not args.train_file:
        raise RqaError("--train_file is required")
    checks: dict[str, Callable[[], Any]] = {
        "train": lambda: read_examples(args.train_file),
        "loss": lambda: choose("retriever_losses", args.loss, args.loss_option, temperature=args.temperature),
    }
    if args.eval_file:
        checks["eval"] = lambda: read_examples(args.eval_file)
    if args.test_file:
        checks["test"] = lambda: read_examples(args.test_file)
    if args.full_dataset_file_path:
        checks["documents"] = lambda: read_documents(args.full_dataset_file_path)
    results, problems = choose_all(checks)
    for label in ("train", "eval", "test"):
        if label in results:
            try:
                check_hard_negatives(results[label])
            except RqaError as error:
                problems.append(str(error))
    if problems:
        raise RqaError("\n".join(problems))
    return results, results["loss"]


def run_retriever_training(args: RqaRetrieverTrainingArguments) -> dict[str, Path]:
    """Train, evaluate at step 0 and every ``--eval_steps``, save the model, predict the test file."""
    from rqa.pipeline import load_database, metric_factories

    inputs, loss_choice = _read_inputs(args)
    train, evaluation, test = inputs["train"], inputs.get("eval", []), inputs.get("test", [])
    pairs, triplets = training_rows(train, args.hard_neg_ratio, args.seed)
    log.info("%d training rows, %d with a hard negative", len(pairs) + len(triplets), len(triplets))
    documents = inputs.get("documents")
    if (evaluation or test) and documents is None:
        documents = load_database(None, [*train, *evaluation, *test])
    metrics = metric_factories(["retrieval"], args.top_k)

    from sentence_transformers import SentenceTransformerTrainer
    from transformers.trainer_utils import IntervalStrategy

    model = load_embedder(args.model_name_or_path, args.pooling_type)
    loss = loss_choice.build(model=model)
    evaluator = DatabaseRetrievalEvaluator(evaluation, documents, args.top_k, metrics) if evaluation else None
    if evaluator is None:
        args.eval_strategy = IntervalStrategy.NO
        args.eval_on_start = False
        args.load_best_model_at_end = False
    output_dir = Path(args.output_dir)
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=training_dataset(pairs, triplets), loss=loss, evaluator=evaluator
    )
    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        resolved = {**args.to_dict(), "resolved_loss": {"name": loss_choice.name, "options": loss_choice.options}}
        write_json_atomic(output_dir / "rqa_args.json", resolved)
    trainer.train()
    trainer.save_model(str(output_dir))
    trainer.save_state()
    results = {"model": output_dir, "trainer_state": output_dir / "trainer_state.json"}
    if (output_dir / "eval").is_dir():
        results["eval"] = output_dir / "eval"
    if test and trainer.is_world_process_zero():
        tester = DatabaseRetrievalEvaluator(test, documents, args.top_k, metrics)
        scores = tester.score(trainer.model, "test", output_dir)
        trainer.log({f"test_{k}": v for k, v in scores.items()})
        trainer.save_state()
        results["test_predictions"] = output_dir / "test-predictions.jsonl"
        results["test_metrics"] = output_dir / "test-metrics.json"
    return results

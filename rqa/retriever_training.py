"""``rqa train-retriever``: contrastive fine-tuning of the embedding model on the QA files.

sentence-transformers does the training (``SentenceTransformerTrainer``, its no-duplicates batch sampler, the loss
from rqa's retriever-loss registry). What rqa adds: LocalRQA's data and flags (one training row per gold passage,
a share of rows with a hard negative checked against the gold), and evaluation the way the embedder is used:
retrieving from the *whole* document database with rqa's own dense retriever and scoring with rqa's retrieval
metric, written as ``eval/step-N-*`` files like ``rqa train`` writes them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentence_transformers import SentenceTransformerTrainer
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator
from transformers import TrainerCallback

from rqa.contracts import SupportsRefresh, SupportsTrainingData
from rqa.errors import RqaError
from rqa.evaluation import prediction_row, score_rows, write_results
from rqa.retrieval import DenseFaissRetriever, record_reading, settle_embed_urls, settle_windows
from rqa.retriever_data import (
    check_gold_in_database,
    check_hard_negatives,
    inverse_cloze_rows,
    mine_hard_negatives,
    training_dataset,
    training_rows,
)
from rqa.schema import Document, Example
from rqa.trainer import random_state_kept

if TYPE_CHECKING:
    from rqa.pipeline import ComponentChoice
    from rqa.retriever_config import RqaRetrieverTrainingArguments

log = logging.getLogger("rqa")
POOLING_MODES = {"mean": "mean", "cls": "cls", "last": "lasttoken"}  # LocalRQA's names -> sentence-transformers'


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
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    encoder = Transformer(path)
    pooling = Pooling(encoder.get_embedding_dimension(), pooling_mode=POOLING_MODES[pooling_type or "mean"])
    return SentenceTransformer(modules=[encoder, pooling])


def set_max_seq_length(model: Any, length: int) -> None:
    """Let the embedder read ``length`` tokens of each text; the saved model keeps the setting, so every index built
    with it reads as many. Beyond the model's position table there is nothing to read with: refused."""
    encoder = getattr(model[0], "auto_model", None)  # absent in models without a transformer (static embeddings)
    positions = getattr(getattr(encoder, "config", None), "max_position_embeddings", None)
    if positions is not None and length > positions:
        raise RqaError(f"--max_seq_length {length} is more than this embedder's {positions} positions")
    model.max_seq_length = length


class DatabaseRetrievalEvaluator(SentenceEvaluator):
    """Retrieves every question's top k from the whole database with the model being trained, scores it with rqa's
    retrieval metric, and writes ``{name}-predictions.jsonl`` and ``{name}-metrics.json``.

    sentence-transformers' own ``InformationRetrievalEvaluator`` takes a corpus and relevance ids; this one uses
    rqa's ``DenseFaissRetriever`` (indexed in memory each time) and rqa's metric and files, so a training run's
    numbers are those ``rqa evaluate --retrieval_only`` reports for the saved model.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        documents: Sequence[Document],
        top_k: int,
        metrics: dict[str, Any],
        quiet: bool = False,
        embed_urls: bool = True,
        windows: bool = False,
    ) -> None:
        super().__init__()
        self.examples, self.documents, self.top_k, self.metrics = list(examples), list(documents), top_k, metrics
        self.quiet, self.embed_urls, self.windows = quiet, embed_urls, windows
        self.primary_metric = f"retr/recall@{top_k}"
        self.greater_is_better = True

    def __call__(
        self, model: Any, output_path: str | None = None, epoch: float = -1, steps: int = -1
    ) -> dict[str, float]:
        return self.score(model, f"step-{max(steps, 0)}", Path(output_path) if output_path else None)

    def score(self, model: Any, name: str, output_dir: Path | None) -> dict[str, float]:
        from rqa.progress import is_main_process, quiet_progress

        with quiet_progress(self.quiet):  # a bar while the database is embedded, on a terminal only
            retriever = DenseFaissRetriever.in_memory(
                model, self.documents, progress=True, embed_urls=self.embed_urls, windows=self.windows
            )
        start = time.perf_counter()
        hits = retriever.retrieve([e.question for e in self.examples], self.top_k)
        per_question = (time.perf_counter() - start) / max(len(self.examples), 1)
        rows = [prediction_row(e, h, "", per_question, 0.0) for e, h in zip(self.examples, hits, strict=True)]
        scores = score_rows(rows, self.metrics)
        if output_dir is not None and is_main_process():  # every process scores (each decides on the best model)
            write_results(output_dir, name, rows, scores)
        log.info("%s: %s %.3f", name, self.primary_metric, scores.get(self.primary_metric, float("nan")))
        return scores


class RetrieverTrainer(SentenceTransformerTrainer):
    """sentence-transformers' trainer, but evaluating leaves the training's random state as it was (its evaluation
    loop iterates an empty DataLoader, which draws from torch's generator), so ``--eval_steps`` does not change
    the trained model."""

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        with random_state_kept():
            return super().evaluate(*args, **kwargs)


def _choose_loss(args: RqaRetrieverTrainingArguments) -> Any:
    """The loss and its options; a loss flag (``--temperature``, ``--generator_model``…) that this loss does not
    take is ignored with a warning rather than refused, since LocalRQA's scripts pass them whatever the loss."""
    from rqa.pipeline import choose
    from rqa.plugins import get_plugins
    from rqa.registry import parse_component_spec
    from rqa.retriever_config import loss_flags

    name, _ = parse_component_spec(args.loss, list(args.loss_option))
    flags = loss_flags(args)
    accepted = get_plugins()["retriever_losses"].accepted(name, flags)
    for flag in sorted(set(flags) - set(accepted)):
        log.warning("--%s is not an option of the retriever loss '%s': ignored", flag, name)
    return choose("retriever_losses", args.loss, args.loss_option, **accepted)


def _read_inputs(args: RqaRetrieverTrainingArguments) -> tuple[dict[str, Any], Any]:
    """Every file and the loss, checked before any model loads; all problems reported at once."""
    from rqa.pipeline import choose, choose_all
    from rqa.schema import read_documents, read_examples

    if not args.train_file:
        raise RqaError("--train_file is required")
    checks: dict[str, Callable[[], Any]] = {
        "train": lambda: read_examples(args.train_file),
        "loss": lambda: _choose_loss(args),
    }
    if args.eval_file:
        checks["eval"] = lambda: read_examples(args.eval_file)
    if args.test_file:
        checks["test"] = lambda: read_examples(args.test_file)
    if args.full_dataset_file_path:
        checks["documents"] = lambda: read_documents(args.full_dataset_file_path)
    if args.mining_retriever:
        checks["mining"] = lambda: choose("retrievers", args.mining_retriever)
    results, problems = choose_all(checks)
    for label in ("train", "eval", "test"):
        if label in results:
            try:
                check_hard_negatives(results[label])
                if "documents" in results:
                    check_gold_in_database(results[label], results["documents"])
            except RqaError as error:
                problems.append(str(error))
    if problems:
        raise RqaError("\n".join(problems))
    return results, results["loss"]


def run_retriever_training(args: RqaRetrieverTrainingArguments, console: Any = None) -> dict[str, Path]:
    """Train, evaluate at step 0 and every ``--eval_steps``, save the model, predict the test file."""
    from rqa.checkpoints import check_output_dir, clear_for_overwrite, record_test_scores, resume_path, save_trained
    from rqa.pipeline import load_database, metric_factories
    from rqa.signals import StopOnSignal, StopRequested

    inputs, loss_choice = _read_inputs(args)
    check_output_dir(args)
    train, evaluation, test = inputs["train"], inputs.get("eval", []), inputs.get("test", [])
    documents = inputs.get("documents")
    needs_database = args.mine_hard_negatives or args.inverse_cloze or loss_choice.name == "replug"
    if documents is None and (evaluation or test or needs_database):
        documents = load_database(None, [*train, *evaluation, *test])
    metrics = metric_factories(["retrieval"], args.top_k)

    from transformers.trainer_utils import IntervalStrategy

    model = load_embedder(args.model_name_or_path, args.pooling_type)
    if args.max_seq_length is not None:
        set_max_seq_length(model, args.max_seq_length)
    embed_urls = embed_urls_to_train(args)
    windows = windows_to_train(args)
    loss = loss_choice.build(model=model, embed_urls=embed_urls)
    dataset = _training_data(args, loss, train, documents, model, embed_urls, inputs.get("mining"))
    quiet = bool(args.disable_tqdm)
    evaluator = None
    if evaluation:
        evaluator = DatabaseRetrievalEvaluator(evaluation, documents, args.top_k, metrics, quiet, embed_urls, windows)
    if evaluator is None:
        args.eval_strategy = IntervalStrategy.NO
        args.eval_on_start = False
        args.load_best_model_at_end = False
    output_dir = Path(args.output_dir)
    stop = StopOnSignal()
    callbacks = [stop, RecordReading(embed_urls, windows)]
    callbacks += [RefreshCallback(loss)] if isinstance(loss, SupportsRefresh) else []
    trainer = RetrieverTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss, evaluator=evaluator, callbacks=callbacks
    )
    clear_for_overwrite(args)
    if trainer.is_world_process_zero():
        from rqa.runs import RunRecord

        RunRecord.create(output_dir, args.to_dict(), loss=loss_choice).write()
    try:
        trainer.train(resume_from_checkpoint=resume_path(args))
    except StopRequested:
        stop.restore()
        raise RqaError(f"stopped by {stop.received} before training began; nothing was saved") from None
    results = save_trained(trainer, stop, output_dir)
    if trainer.is_world_process_zero():
        record_reading(output_dir, embed_urls, windows)
    if (output_dir / "eval").is_dir():
        results["eval"] = output_dir / "eval"
    if not trainer.is_world_process_zero():
        return {}  # the main process predicts and reports
    test_scores = None
    if test:
        tester = DatabaseRetrievalEvaluator(test, documents, args.top_k, metrics, quiet, embed_urls, windows)
        test_scores = tester.score(trainer.model, "test", output_dir)
        results.update(record_test_scores(trainer, test_scores, output_dir))
    _report(args, trainer, metrics, test_scores, results, console)
    return results


def _report(
    args: RqaRetrieverTrainingArguments,
    trainer: Any,
    metrics: dict[str, Any],
    test_scores: dict[str, float] | None,
    results: dict[str, Path],
    console: Any,
) -> None:
    """``report.png`` and the end-of-run summary (base model → trained, test, glossary), as ``rqa train`` gives."""
    from rqa.display import print_run_summary
    from rqa.report import plot_run
    from rqa.scoring import run_key_info

    output_dir = Path(args.output_dir)
    history = trainer.state.log_history
    info = run_key_info(metrics, args.top_k)
    title = f"rqa train-retriever: {output_dir.name}"
    picture = plot_run(
        history, output_dir / "report.png", args.top_k, output_dir / "eval", title, info, retrieval_only=True
    )
    if picture is not None:
        results["report"] = picture
    final_step = trainer.state.best_global_step if args.load_best_model_at_end else trainer.state.global_step
    if console is not None:
        print_run_summary(console, history, args.top_k, test_scores, final_step, info)


def _training_data(
    args: RqaRetrieverTrainingArguments,
    loss: Any,
    train: list[Example],
    documents: Any,
    model: Any,
    embed_urls: bool,
    mining: ComponentChoice | None = None,
) -> Any:
    """The loss's own rows where it makes them (``SupportsTrainingData``), else question/gold pairs with a share of
    hard negatives, mined first with ``--mine_hard_negatives`` (by the ``--mining_retriever`` where one is named)."""
    if mining is not None and (isinstance(loss, SupportsTrainingData) or not args.mine_hard_negatives):
        why = f"the loss '{args.loss}' makes its own rows" if args.mine_hard_negatives else "--mine_hard_negatives is 0"
        log.warning("--mining_retriever %s is not used: %s", mining.name, why)
    if isinstance(loss, SupportsTrainingData):
        if args.inverse_cloze:
            log.warning(
                "--inverse_cloze %d is not used: the loss '%s' makes its own rows", args.inverse_cloze, args.loss
            )
        return loss.training_data(train, documents)
    if args.mine_hard_negatives:
        began = time.perf_counter()
        miner = None
        if mining is not None:
            from rqa.pipeline import build_retriever, with_defaults

            # the starting model as loaded here (its pooling too), reading passages as training will
            mining = with_defaults(mining, embed_urls=embed_urls)
            miner = build_retriever(mining, documents, None, embedding_model=args.model_name_or_path, encoder=model)
        train = mine_hard_negatives(train, documents, model, args.mine_hard_negatives, embed_urls, miner)
        log.info("mined up to %d hard negatives per question in %.0f s", args.mine_hard_negatives,
                 time.perf_counter() - began)  # fmt: skip
    groups = training_rows(train, args.hard_neg_ratio, args.seed, args.negatives_per_row, embed_urls)
    if args.inverse_cloze:
        pseudo = inverse_cloze_rows(documents, args.inverse_cloze, args.seed, embed_urls)
        groups.setdefault(0, []).extend(pseudo)  # no hard negatives: the last group of training_rows' order
        log.info("%d inverse-cloze rows from %d database passages", len(pseudo), len(documents))
    log.info("%d training rows; by hard negatives carried: %s", sum(map(len, groups.values())),
             ", ".join(f"{count}: {len(rows)}" for count, rows in groups.items()))  # fmt: skip
    return training_dataset(groups)


def embed_urls_to_train(args: RqaRetrieverTrainingArguments) -> bool:
    """``--embed_urls``, else what the starting model folder records (a model trained further), else true."""
    from rqa.models import resolve_embedder

    return settle_embed_urls(resolve_embedder(args.model_name_or_path), args.embed_urls)


def windows_to_train(args: RqaRetrieverTrainingArguments) -> bool:
    """``--windows``, else what the starting model folder records, else true: the trained model reads the whole
    of every passage (a retriever's own default stays off, so a base model's index is read as before)."""
    from rqa.models import resolve_embedder

    return settle_windows(resolve_embedder(args.model_name_or_path), args.windows, default=True)


class RecordReading(TrainerCallback):
    """Each checkpoint folder is a model too (``--embedding_model runs/retriever/checkpoint-N``): it records how it
    reads passages as the final folder does."""

    def __init__(self, embed_urls: bool, windows: bool) -> None:
        self.embed_urls, self.windows = embed_urls, windows

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            record_reading(checkpoint, self.embed_urls, self.windows)


class RefreshCallback(TrainerCallback):
    """Calls a loss's ``refresh(model)`` before the first step (a resumed run's too) and every ``refresh_steps``."""

    def __init__(self, loss: SupportsRefresh) -> None:
        self.loss = loss
        self.refreshed_at: int | None = None

    def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        step = state.global_step
        if self.refreshed_at is None or step - self.refreshed_at >= self.loss.refresh_steps:
            self.loss.refresh(model)
            self.refreshed_at = step

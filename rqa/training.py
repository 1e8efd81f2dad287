"""``rqa train``: SFT with gold data, end-to-end evaluation while training, test predictions at the end.

``run_training`` reads as its four steps: ``plan_training`` checks everything before a model loads and settles
the arguments (nothing changes them afterwards); ``build_training`` assembles the parts (``rqa.assembly``, with the
machine-specific model set-up in ``rqa.models``) and records the run (``rqa.runs.RunRecord``); ``train`` trains and
predicts the test file; ``report`` draws the run and prints its summary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rqa.checkpoints import check_output_dir, clear_for_overwrite, record_test_scores, resume_path, save_trained
from rqa.config import RqaTrainingArguments
from rqa.errors import RqaError
from rqa.pipeline import ComponentChoice, build_retriever, check_all, choose, load_database, metric_names
from rqa.schema import Document, Example, read_examples
from rqa.signals import StopOnSignal, StopRequested

log = logging.getLogger("rqa")


@dataclass
class TrainPlan:
    """Everything checked before a model loads (what ``--dry_run`` reports)."""

    args: RqaTrainingArguments
    formatter: ComponentChoice
    loss: ComponentChoice
    retriever: ComponentChoice
    metrics: list[str]
    train: list[Example]
    eval: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)
    documents: list[Document] | None = None  # the database, when one was given

    @property
    def evaluates_end_to_end(self) -> bool:
        return bool(self.eval) and self.args.e2e_eval

    @property
    def needs_retriever(self) -> bool:
        return self.evaluates_end_to_end or bool(self.test) or self.args.raft_source == "retriever"


def plan_training(args: RqaTrainingArguments) -> TrainPlan:
    """Validate files, component names and options; report every problem at once."""
    formatter_defaults = args.prefix_options() if args.resolved_formatter() in ("prefixes", "auto") else {}
    checks: dict[str, Any] = {
        "formatter": lambda: choose(
            "formatters", args.resolved_formatter(), args.formatter_option, **formatter_defaults
        ),
        "loss": lambda: choose("losses", args.loss, args.loss_option, probe={}),
        "retriever": lambda: choose(
            "retrievers", args.retriever, args.retriever_option, probe=_embedding_context(args)
        ),
        "metrics": lambda: metric_names(args.metrics),
        "train": lambda: read_examples(_required(args.train_file, "--train_file")),
    }
    for split in ("eval", "test"):
        path = getattr(args, f"{split}_file")
        if path:
            checks[split] = partial(read_examples, path)
    if args.full_dataset_file_path:
        checks["documents"] = lambda: load_database(args.full_dataset_file_path, [])
    checks["output_dir"] = lambda: check_output_dir(args)
    results = check_all(checks)
    plan = TrainPlan(
        args=args,
        formatter=results["formatter"],
        loss=results["loss"],
        retriever=results["retriever"],
        metrics=results["metrics"],
        train=results["train"],
        eval=results.get("eval", []),
        test=results.get("test", []),
        documents=results.get("documents"),
    )
    _settle_evaluation(plan)
    return plan


def _settle_evaluation(plan: TrainPlan) -> None:
    """The arguments' last change, decided from the plan: no evaluation without eval data; whether at step 0."""
    args = plan.args
    if not plan.eval and args.eval_strategy != "no":
        args.eval_strategy = "no"
        args.load_best_model_at_end = False
    args.eval_on_start = _evaluates_on_start(args, bool(plan.eval), plan.evaluates_end_to_end)


def _required(value: str | None, flag: str) -> str:
    if not value:
        raise RqaError(f"{flag} is required")
    return value


def _embedding_context(args: RqaTrainingArguments) -> dict[str, Any]:
    return {"embedding_model": args.eval_embedding_model} if args.eval_embedding_model else {}


def run_training(args: RqaTrainingArguments, console: Any) -> dict[str, Path]:
    """Plan, build, train, report; returns where the results went (nothing on processes other than the main one)."""
    plan = plan_training(args)
    if args.dry_run:
        console.print(
            f"[green]configuration OK[/]: {len(plan.train)} train, {len(plan.eval)} eval, {len(plan.test)} test "
            f"examples; formatter {plan.formatter.name}, loss {plan.loss.name}, retriever {plan.retriever.name}, "
            f"metrics {', '.join(plan.metrics)}"
        )
        return {}
    run = build_training(plan)
    results, test_scores = train(run)
    if not run.is_main:
        return {}  # the main process reports
    return report(run, results, test_scores, console)


def _evaluates_on_start(args: RqaTrainingArguments, has_eval_data: bool, has_e2e: bool) -> bool:
    """Whether to evaluate the base model at step 0: the baseline every later evaluation is compared with.

    Left unset, whenever the run evaluates end to end while it trains; asked for, whenever there is anything to
    evaluate (the eval loss alone without ``--e2e_eval``).
    """
    if args.eval_on_start is None:
        return has_e2e and args.eval_strategy != "no"
    return bool(args.eval_on_start) and (has_eval_data or has_e2e)


@dataclass
class TrainingRun:
    """A planned run, assembled: the trainer and what predicts the test file afterwards."""

    plan: TrainPlan
    output_dir: Path
    trainer: Any  # RqaTrainer
    metrics: dict[str, Any]  # name -> factory
    test_evaluator: Any = None  # E2EEvaluator

    @property
    def is_main(self) -> bool:
        return bool(self.trainer.is_world_process_zero())


def build_training(plan: TrainPlan) -> TrainingRun:
    """Tokenizer, formatter, encoder and retriever (``rqa.assembly``), data, model, trainer; records the run."""
    from rqa.assembly import build_encoder
    from rqa.models import load_for_training, resolve_generator, training_collator
    from rqa.pipeline import metric_factories
    from rqa.runs import RunRecord
    from rqa.trainer import RqaTrainer

    args = plan.args
    output_dir = Path(args.output_dir)
    clear_for_overwrite(args)
    model_path = resolve_generator(args.model_name_or_path)
    loss = plan.loss.build()
    encoder = build_encoder(model_path, plan.formatter, args.max_seq_length, loss.supervise, args.supervise_history)
    retriever = _prepare_retriever(plan, output_dir) if plan.needs_retriever else None
    train_data, stats = encoder.encode_all(plan.train, _training_context(plan, retriever))
    if not train_data:
        raise RqaError(
            f"--max_seq_length {args.max_seq_length} is too small: no training example's answer fits "
            f"(first: {stats.dropped[0]})"
        )
    eval_data = encoder.encode_all(plan.eval)[0] if plan.eval else None
    log.info("formatter %s; %d training examples encoded", plan.formatter.name, len(train_data))
    model = load_for_training(args, model_path)
    metrics = metric_factories(plan.metrics, args.top_k)
    evaluator, test_evaluator = _evaluators(plan, encoder, retriever, metrics, output_dir)
    trainer = RqaTrainer(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=training_collator(args, model, encoder.tokenizer),
        processing_class=encoder.tokenizer,
        loss=loss,
        e2e_evaluator=evaluator,
    )
    if trainer.is_world_process_zero():
        chosen = {"formatter": plan.formatter, "loss": plan.loss, "retriever": plan.retriever}
        RunRecord.create(output_dir, args.to_dict(), model_path=model_path, metrics=plan.metrics, **chosen).write()
    return TrainingRun(plan, output_dir, trainer, metrics, test_evaluator)


def train(run: TrainingRun) -> tuple[dict[str, Path], dict[str, float] | None]:
    """Train (a stop saves a checkpoint), save the model, predict the test file; the files and the test scores."""
    args, trainer, output_dir = run.plan.args, run.trainer, run.output_dir
    stop = StopOnSignal()
    trainer.add_callback(stop)
    try:
        trainer.train(resume_from_checkpoint=resume_path(args))
    except StopRequested:  # during the base model's evaluation at step 0: nothing trained, nothing to save
        stop.restore()
        raise RqaError(
            f"stopped by {stop.received} while evaluating the base model (step 0), before training; nothing "
            "was saved: run the same command again to start over"
        ) from None
    results = save_trained(trainer, stop, output_dir)
    test_scores = None
    if run.test_evaluator is not None:
        try:
            with stop.installed():  # SIGTERM or Ctrl-C abandons the test predictions too
                test_scores = run.test_evaluator.evaluate_model(
                    trainer.model, name="test", is_main=run.is_main, stop=stop
                )
        except StopRequested:
            raise RqaError(
                f"stopped by {stop.received} while predicting the test file; the trained model is saved in "
                f"{output_dir}: predict it with rqa evaluate --model {output_dir} --data {args.test_file}"
            ) from None
        results.update(record_test_scores(trainer, test_scores, output_dir))
    if (output_dir / "eval").is_dir():
        results["eval"] = output_dir / "eval"
    return results, test_scores


def report(
    run: TrainingRun, results: dict[str, Path], test_scores: dict[str, float] | None, console: Any
) -> dict[str, Path]:
    """``report.png`` and the end-of-run summary; returns ``results`` with the picture added."""
    from rqa.display import print_run_summary
    from rqa.report import plot_run
    from rqa.scoring import run_key_info

    args, state, output_dir = run.plan.args, run.trainer.state, run.output_dir
    info = run_key_info(run.metrics)  # headline keys and glossary lines
    picture = plot_run(
        state.log_history, output_dir / "report.png", top_k=args.top_k, eval_dir=output_dir / "eval", info=info
    )
    if picture is not None:
        results["report"] = picture
    # the saved model is the best checkpoint's with --load_best_model_at_end, else the last step's
    final_step = state.best_global_step if args.load_best_model_at_end else state.global_step
    print_run_summary(console, state.log_history, args.top_k, test_scores, final_step, info)
    return results


def _prepare_retriever(plan: TrainPlan, output_dir: Path) -> Any:
    from rqa.progress import quiet_progress

    args = plan.args
    documents = plan.documents or load_database(None, [*plan.train, *plan.eval, *plan.test])
    # one process builds, the rest reuse
    with args.main_process_first(desc="building the retrieval index"), quiet_progress(args.disable_tqdm):
        return build_retriever(
            plan.retriever,
            documents,
            args.full_dataset_index_path or output_dir / "index",
            embedding_model=args.eval_embedding_model,
        )


def _evaluators(
    plan: TrainPlan, encoder: Any, retriever: Any, metrics: dict[str, Any], output_dir: Path
) -> tuple[Any, Any]:
    """The end-to-end evaluator of the eval file while training and the test file's; None where not run."""
    if retriever is None:
        return None, None
    from rqa.evaluation import E2EEvaluator

    args = plan.args
    common = {
        "encoder": encoder,
        "retriever": retriever,
        "metrics": metrics,
        "top_k": args.top_k,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.per_device_eval_batch_size,
        "quiet": args.disable_tqdm,
    }
    evaluator = test_evaluator = None
    if plan.evaluates_end_to_end:
        questions = plan.eval[: args.max_eval_questions] if args.max_eval_questions else plan.eval
        evaluator = E2EEvaluator(questions, output_dir=output_dir / "eval", **common)
    if plan.test:
        test_evaluator = E2EEvaluator(plan.test[: args.max_test_questions], output_dir=output_dir, **common)
    return evaluator, test_evaluator


def _training_context(plan: TrainPlan, retriever: Any) -> Any:
    """None for gold passages only; otherwise ``(example, index) -> passages`` mixing in distractors."""
    args = plan.args
    if args.train_context == "gold":
        return None
    from rqa.context import RaftContext, hard_negatives, retrieved_negatives

    raft = RaftContext(args.raft_distractors, args.raft_keep_gold, args.seed)
    if args.raft_source == "retriever":
        k = args.raft_distractors + max(len(e.gold_docs) for e in plan.train)
        candidates = retrieved_negatives(retriever, plan.train, k)
    else:
        candidates = hard_negatives
    return lambda example, index: raft.passages(example, index, candidates(example))

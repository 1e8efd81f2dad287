"""``rqa train``: SFT with gold data, end-to-end evaluation while training, test predictions at the end."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rqa.checkpoints import check_output_dir, clear_for_overwrite, record_test_scores, resume_path, save_trained
from rqa.config import RqaTrainingArguments
from rqa.display import print_run_summary
from rqa.errors import RqaError
from rqa.files import write_json_atomic
from rqa.pipeline import ComponentChoice, build_retriever, choose, choose_all, load_database, metric_names
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
    results, problems = choose_all(checks)
    if problems:
        raise RqaError("the configuration has problems:\n  - " + "\n  - ".join(problems))
    return TrainPlan(
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


def _required(value: str | None, flag: str) -> str:
    if not value:
        raise RqaError(f"{flag} is required")
    return value


def _embedding_context(args: RqaTrainingArguments) -> dict[str, Any]:
    return {"embedding_model": args.eval_embedding_model} if args.eval_embedding_model else {}


def run_training(args: RqaTrainingArguments, console: Any) -> dict[str, Path]:
    """Train, evaluate end to end, predict the test file; returns where the results went."""
    plan = plan_training(args)
    if args.dry_run:
        console.print(
            f"[green]configuration OK[/]: {len(plan.train)} train, {len(plan.eval)} eval, {len(plan.test)} test "
            f"examples; formatter {plan.formatter.name}, loss {plan.loss.name}, retriever {plan.retriever.name}, "
            f"metrics {', '.join(plan.metrics)}"
        )
        return {}

    from rqa.data import ExampleEncoder
    from rqa.evaluation import E2EEvaluator
    from rqa.models import load_tokenizer, resolve_generator
    from rqa.pipeline import metric_factories
    from rqa.report import plot_run
    from rqa.scoring import run_key_info
    from rqa.trainer import RqaTrainer

    output_dir = Path(args.output_dir)
    clear_for_overwrite(args)
    model_path = resolve_generator(args.model_name_or_path)
    tokenizer = load_tokenizer(model_path)
    loss = plan.loss.build()
    encoder = ExampleEncoder(
        tokenizer,
        plan.formatter.build(tokenizer=tokenizer),
        max_seq_length=args.max_seq_length,
        supervise=loss.supervise,
        supervise_history=args.supervise_history,
    )
    needs_retriever = (plan.eval and args.e2e_eval) or plan.test or args.raft_source == "retriever"
    retriever = _prepare_retriever(args, plan, output_dir) if needs_retriever else None
    train_data, stats = encoder.encode_all(plan.train, _training_context(args, plan, retriever))
    if not train_data:
        raise RqaError(
            f"--max_seq_length {args.max_seq_length} is too small: no training example's answer fits "
            f"(first: {stats.dropped[0]})"
        )
    eval_data = encoder.encode_all(plan.eval)[0] if plan.eval else None
    if eval_data is None and args.eval_strategy != "no":
        args.eval_strategy = "no"
        args.load_best_model_at_end = False
    log.info("formatter %s; %d training examples encoded", plan.formatter.name, len(train_data))
    save_host_memory(args)
    warn_if_bf16_is_emulated(args)
    model = _load_model(args, model_path)

    evaluator = test_evaluator = None
    if retriever is not None:
        common = {
            "encoder": encoder,
            "retriever": retriever,
            "metrics": metric_factories(plan.metrics, args.top_k),
            "top_k": args.top_k,
            "max_new_tokens": args.max_new_tokens,
            "batch_size": args.per_device_eval_batch_size,
            "quiet": args.disable_tqdm,
        }
        if plan.eval and args.e2e_eval:
            questions = plan.eval[: args.max_eval_questions] if args.max_eval_questions else plan.eval
            evaluator = E2EEvaluator(questions, output_dir=output_dir / "eval", **common)
        if plan.test:
            test_evaluator = E2EEvaluator(plan.test[: args.max_test_questions], output_dir=output_dir, **common)

    args.eval_on_start = _evaluates_on_start(args, eval_data is not None, evaluator is not None)
    trainer = RqaTrainer(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=_collator(args, model, tokenizer),
        processing_class=tokenizer,
        loss=loss,
        e2e_evaluator=evaluator,
    )
    is_main = trainer.is_world_process_zero()
    if is_main:
        write_json_atomic(output_dir / "rqa_args.json", _resolved_args(args, plan, model_path))
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
    if test_evaluator is not None:
        try:
            with stop.installed():  # SIGTERM or Ctrl-C abandons the test predictions too
                scores = test_evaluator.evaluate_model(trainer.model, name="test", is_main=is_main, stop=stop)
        except StopRequested:
            raise RqaError(
                f"stopped by {stop.received} while predicting the test file; the trained model is saved in "
                f"{output_dir}: predict it with rqa evaluate --model {output_dir} --data {args.test_file}"
            ) from None
        results.update(record_test_scores(trainer, scores, output_dir))
        test_scores = scores
    if (output_dir / "eval").is_dir():
        results["eval"] = output_dir / "eval"
    if not is_main:
        return {}  # the main process reports
    history = trainer.state.log_history
    info = run_key_info(metric_factories(plan.metrics, args.top_k))  # headline keys and glossary lines
    picture = plot_run(history, output_dir / "report.png", top_k=args.top_k, eval_dir=output_dir / "eval", info=info)
    if picture is not None:
        results["report"] = picture
    # the saved model is the best checkpoint's with --load_best_model_at_end, else the last step's
    final_step = trainer.state.best_global_step if args.load_best_model_at_end else trainer.state.global_step
    print_run_summary(console, history, args.top_k, test_scores, final_step, info)
    return results


def _evaluates_on_start(args: RqaTrainingArguments, has_eval_data: bool, has_e2e: bool) -> bool:
    """Whether to evaluate the base model at step 0: the baseline every later evaluation is compared with.

    Left unset, whenever the run evaluates end to end while it trains; asked for, whenever there is anything to
    evaluate (the eval loss alone without ``--e2e_eval``).
    """
    if args.eval_on_start is None:
        return has_e2e and args.eval_strategy != "no"
    return bool(args.eval_on_start) and (has_eval_data or has_e2e)


def _prepare_retriever(args: RqaTrainingArguments, plan: TrainPlan, output_dir: Path) -> Any:
    from rqa.progress import quiet_progress

    documents = plan.documents or load_database(None, [*plan.train, *plan.eval, *plan.test])
    # one process builds, the rest reuse
    with args.main_process_first(desc="building the retrieval index"), quiet_progress(args.disable_tqdm):
        return build_retriever(
            plan.retriever,
            documents,
            args.full_dataset_index_path or output_dir / "index",
            embedding_model=args.eval_embedding_model,
        )


def _training_context(args: RqaTrainingArguments, plan: TrainPlan, retriever: Any) -> Any:
    """None for gold passages only; otherwise ``(example, index) -> passages`` mixing in distractors."""
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


def _collator(args: RqaTrainingArguments, model: Any, tokenizer: Any) -> Any:
    from rqa.packing import choose_collator

    # on a GPU, rows of a few repeating lengths keep kernel look-ups cached (see PackingCollator)
    multiple = 64 if args.device.type == "cuda" else None
    return choose_collator(args.padding_free, model, tokenizer.pad_token_id, pad_to_multiple_of=multiple)


def save_host_memory(args: RqaTrainingArguments) -> None:
    """With gradient checkpointing, asked for to save memory, also give freed activations back to the system."""
    from rqa.memory import return_large_blocks_to_the_system

    if args.gradient_checkpointing and return_large_blocks_to_the_system():
        log.info("gradient checkpointing: freed activations go back to the system (lower peak memory)")


def warn_if_bf16_is_emulated(args: RqaTrainingArguments) -> None:
    """bf16 on a CPU without bf16 instructions trains several times slower than fp32: say so before it starts."""
    from rqa.models import cpu_emulates_bf16

    if args.bf16 and args.device.type == "cpu" and cpu_emulates_bf16():
        log.warning(
            "--bf16 true on a CPU without bf16 instructions (avx512_bf16 or AMX): its bf16 matrix products are "
            "emulated, several times slower than fp32 (4x on a 2-core AVX-512 machine); leave --bf16 off here"
        )


def _load_model(args: RqaTrainingArguments, model_path: str) -> Any:
    from rqa.models import load_generator

    model = load_generator(model_path, use_flash_attention=args.use_flash_attention, log=log.warning)
    if args.gradient_checkpointing:
        model.config.use_cache = False
    if args.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        targets = args.lora_target_modules
        lora = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=targets[0] if targets == ["all-linear"] else targets,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model


def _resolved_args(args: RqaTrainingArguments, plan: TrainPlan, model_path: str) -> dict[str, Any]:
    resolved = args.to_dict()
    resolved.update(
        {
            "resolved_model_path": model_path,
            "resolved_formatter": {"name": plan.formatter.name, "options": plan.formatter.options},
            "resolved_loss": {"name": plan.loss.name, "options": plan.loss.options},
            "resolved_retriever": {"name": plan.retriever.name, "options": plan.retriever.options},
            "resolved_metrics": plan.metrics,
        }
    )
    return resolved

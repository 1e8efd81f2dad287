"""``rqa evaluate``: score a saved model end to end (or the retriever alone).

With ``--model RUN`` (a ``rqa train`` output directory) every unset option takes the run's value from its
``rqa_args.json``, so evaluating the run's test file again reproduces its ``test-metrics.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rqa.cli.options import option

if TYPE_CHECKING:
    from rqa.runs import RunRecord
    from rqa.schema import Example

log = logging.getLogger("rqa")


def _from_run(name: str, default: str, help: str, **kwargs: Any) -> Any:
    """An option left unset (None) when not given, so a run's value can fill it; its help says so."""
    return option(name, default=None, help=f"{help} Default: the run's, else {default}.", **kwargs)


@click.command("evaluate")
@option(
    "--model",
    help="Saved model directory or Hub id (default: the embedded generator); a training run's "
    "directory supplies the defaults below from its rqa_args.json.",
)
@option("--data", required=True, help="QA file (JSONL) to evaluate on.")
@option(
    "--documents",
    help="Document database (JSONL or LocalRQA .pkl). Default: the run's, else the passages of the QA files.",
)
@option(
    "--index",
    help="Index directory (built on first use, reused when it matches). Default: the run's, for the run's database.",
)
@_from_run("--retriever", "dense-faiss", "Retriever name.")
@option("--retriever_option", multiple=True, help="Retriever option KEY=VALUE (repeatable; over the run's).")
@_from_run("--embedding_model", "the embedded MiniLM", "Embedding model for the retriever.")
@_from_run("--formatter", "auto", "Formatter name.")
@option("--formatter_option", multiple=True, help="Formatter option KEY=VALUE (repeatable; over the run's).")
@_from_run("--top_k", "4", "Passages retrieved per question.", type=int)
@_from_run("--metrics", "all", "Metric names, or 'all'.", multiple=True)
@_from_run("--max_new_tokens", "128", "Longest answer, in tokens.", type=int)
@_from_run("--max_seq_length", "2048", "Longest prompt, in tokens.", type=int)
@_from_run("--batch_size", "32", "Questions generated together (a run's --per_device_eval_batch_size).", type=int)
@_from_run("--use_flash_attention", "false", "flash-attention 2 with bf16 when available.", type=bool)
@option("--limit", type=int, help="Evaluate the first N questions only.")
@option("--retrieval_only", is_flag=True, help="Score retrieval alone; load no generator.")
@option(
    "--generator",
    default="hf",
    show_default=True,
    help="Generator backend: hf (the local --model) or e.g. openai:base_url=http://HOST/v1,model=NAME "
    "(same retrieval, prompts and metrics; rqa list-plugins --kind generators).",
)
@option(
    "--judge",
    help="Generator backend for the judge metric, e.g. openai:base_url=...,model=...; with it (or RQA_JUDGE) "
    "--metrics all includes judge.",
)
@option(
    "--judge_max_new_tokens",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Longest judge reply, in tokens (its grade and reason).",
)
@option("--output_dir", required=True, help="Where predictions.jsonl and metrics.json go.")
def evaluate(**kwargs: Any) -> None:
    """Retrieve from the whole database, generate, score, and write predictions and metrics."""
    from rqa.assembly import build_generation, build_retriever, option_overrides, resolve_settings
    from rqa.backends import is_local
    from rqa.display import make_console, print_scores, setup_logging
    from rqa.pipeline import check_all, metric_names
    from rqa.schema import read_examples

    console = make_console()
    setup_logging(console)
    settings = resolve_settings(kwargs["model"], **option_overrides(kwargs))
    requested_metrics = ["retrieval"] if kwargs["retrieval_only"] else settings.metrics
    checks = {
        "examples": lambda: read_examples(kwargs["data"]),
        **settings.checks("retriever"),
        "metrics": lambda: metric_names(requested_metrics),
    }
    local = is_local(settings.generator)
    if not kwargs["retrieval_only"]:
        checks.update(settings.checks("formatter", "generator") if local else settings.checks("generator"))
        checks["metrics"] = lambda: _with_judge(metric_names(requested_metrics), requested_metrics, kwargs["judge"])
    run = settings.run
    if settings.documents is None and run is not None:
        checks["run_passages"] = lambda: _passages_of(run)
    chosen = check_all(checks)
    examples = chosen["examples"][: kwargs["limit"]] if kwargs["limit"] else chosen["examples"]
    retriever = build_retriever(settings, chosen["retriever"], examples, chosen.get("run_passages"))

    from rqa.evaluation import E2EEvaluator, evaluate_retrieval_only
    from rqa.pipeline import metric_factories

    metrics = metric_factories(chosen["metrics"], settings.top_k)
    if "judge" in metrics:
        metrics["judge"] = _judge_factory(kwargs["judge"], kwargs["judge_max_new_tokens"], settings.top_k)
    output_dir = Path(kwargs["output_dir"])
    if kwargs["retrieval_only"]:
        scores = evaluate_retrieval_only(examples, retriever, metrics, settings.top_k, output_dir)
    else:
        generation = build_generation(settings, chosen["generator"], chosen.get("formatter"))
        evaluator = E2EEvaluator(
            examples,
            encoder=generation.encoder,  # type: ignore[arg-type]  # None: the backend renders its own prompts
            retriever=retriever,
            metrics=metrics,
            top_k=settings.top_k,
            max_new_tokens=settings.max_new_tokens,
            batch_size=settings.batch_size,
            output_dir=output_dir,
        )
        if generation.backend is not None:
            from rqa.backends import evaluate_with_generator

            scores = evaluate_with_generator(evaluator, generation.backend)
        else:
            scores = evaluator.evaluate_model(generation.model, name="")
    print_scores(console, scores, "evaluation")
    console.print(f"[bold green]Done.[/] Predictions and metrics in {output_dir}")


def _with_judge(names: list[str], requested: list[str], judge: str | None) -> list[str]:
    """The metric names, with ``judge`` added to ``all`` when a judge is configured; a judge with none fails."""
    from rqa.backends import choose_generator
    from rqa.builtin.judge import JUDGE_ENV, configured_judge
    from rqa.errors import RqaError

    spec = configured_judge(judge)
    if spec and any(name.strip() == "all" for entry in requested for name in entry.split(",")):
        names = [*names, "judge"] if "judge" not in names else names
    if "judge" in names:
        if not spec:
            raise RqaError(f"the judge metric needs a generator: pass --judge openai:base_url=... or set {JUDGE_ENV}")
        choose_generator(spec)  # its options are checked now, not after the evaluation
    return names


def _judge_factory(judge: str | None, max_new_tokens: int, top_k: int) -> Any:
    from functools import partial

    from rqa.builtin.judge import configured_judge
    from rqa.plugins import get_plugins

    options = {"generator": configured_judge(judge), "max_new_tokens": max_new_tokens}
    return partial(get_plugins()["metrics"].build, "judge", options, top_k=top_k)


def _passages_of(run: RunRecord) -> list[Example] | None:
    """The examples of a run's QA files, whose passages were its database when it was given none; None if moved."""
    from rqa.schema import read_examples

    if not run.qa_files or not all(Path(path).is_file() for path in run.qa_files):
        return None
    return [example for path in run.qa_files for example in read_examples(path)]

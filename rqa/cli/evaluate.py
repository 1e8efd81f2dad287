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
    from rqa.runs import SavedRun
    from rqa.schema import Document, Example

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
@option("--output_dir", required=True, help="Where predictions.jsonl and metrics.json go.")
def evaluate(**kwargs: Any) -> None:
    """Retrieve from the whole database, generate, score, and write predictions and metrics."""
    from rqa.backends import is_local, remote_generator
    from rqa.display import make_console, print_scores, setup_logging
    from rqa.errors import RqaError
    from rqa.pipeline import build_retriever, choose, choose_all, metric_names
    from rqa.runs import SavedRun, component, read_run, setting
    from rqa.schema import read_examples

    console = make_console()
    setup_logging(console)
    run = read_run(kwargs["model"])
    saved = run or SavedRun(Path(kwargs["model"] or "."))  # nothing recorded: every setting falls to the default
    formatter_spec, formatter_options = component(kwargs["formatter"], saved.formatter, "auto")
    retriever_spec, retriever_options = component(kwargs["retriever"], saved.retriever, "dense-faiss")
    embedding_model = kwargs["embedding_model"] or saved.embedding_model
    top_k = setting(kwargs["top_k"], saved.top_k, 4)
    requested_metrics = (
        ["retrieval"] if kwargs["retrieval_only"] else setting(kwargs["metrics"] or None, saved.metrics, ["all"])
    )
    documents = kwargs["documents"] or saved.database()
    checks = {
        "examples": lambda: read_examples(kwargs["data"]),
        "retriever": lambda: choose("retrievers", retriever_spec, kwargs["retriever_option"], **retriever_options),
        "metrics": lambda: metric_names(requested_metrics),
    }
    local = is_local(kwargs["generator"])
    if not kwargs["retrieval_only"] and local:
        checks["formatter"] = lambda: choose(
            "formatters", formatter_spec, kwargs["formatter_option"], **formatter_options
        )
    if not kwargs["retrieval_only"]:
        checks["generator"] = lambda: remote_generator(kwargs["generator"])
        checks["metrics"] = lambda: _with_judge(metric_names(requested_metrics), requested_metrics, kwargs["judge"])
    if documents is None and run is not None:
        checks["run_passages"] = lambda: _passages_of(run)
    chosen, problems = choose_all(checks)
    if problems:
        raise RqaError("the configuration has problems:\n  - " + "\n  - ".join(problems))
    examples = chosen["examples"][: kwargs["limit"]] if kwargs["limit"] else chosen["examples"]
    database, index = _database_and_index(documents, kwargs["index"], run, chosen.get("run_passages"), examples)
    retriever = build_retriever(chosen["retriever"], database, index, embedding_model=embedding_model)

    from rqa.evaluation import E2EEvaluator, evaluate_retrieval_only
    from rqa.pipeline import metric_factories

    metrics = metric_factories(chosen["metrics"], top_k)
    if "judge" in metrics:
        metrics["judge"] = _judge_factory(kwargs["judge"], top_k)
    output_dir = Path(kwargs["output_dir"])
    if kwargs["retrieval_only"]:
        scores = evaluate_retrieval_only(examples, retriever, metrics, top_k, output_dir)
    else:
        settings = {
            "retriever": retriever,
            "metrics": metrics,
            "top_k": top_k,
            "max_new_tokens": setting(kwargs["max_new_tokens"], saved.max_new_tokens, 128),
            "batch_size": setting(kwargs["batch_size"], saved.eval_batch_size, 32),
            "output_dir": output_dir,
        }
        if not local:
            from rqa.backends import evaluate_with_generator

            generator = chosen["generator"].build()
            # the backend renders its own prompts: no encoder
            evaluator = E2EEvaluator(examples, encoder=None, **settings)  # type: ignore[arg-type]
            scores = evaluate_with_generator(evaluator, generator)
        else:
            from rqa.data import ExampleEncoder
            from rqa.models import load_generator, load_tokenizer, resolve_generator

            model_path = resolve_generator(kwargs["model"])
            tokenizer = load_tokenizer(model_path)
            formatter = chosen["formatter"].build(tokenizer=tokenizer)
            encoder = ExampleEncoder(
                tokenizer, formatter, max_seq_length=setting(kwargs["max_seq_length"], saved.max_seq_length, 2048)
            )
            flash = setting(kwargs["use_flash_attention"], saved.use_flash_attention, False)
            model = load_generator(model_path, use_flash_attention=flash, log=log.warning)
            scores = E2EEvaluator(examples, encoder=encoder, **settings).evaluate_model(model, name="")
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


def _judge_factory(judge: str | None, top_k: int) -> Any:
    from functools import partial

    from rqa.builtin.judge import configured_judge
    from rqa.plugins import get_plugins

    return partial(get_plugins()["metrics"].build, "judge", {"generator": configured_judge(judge)}, top_k=top_k)


def _passages_of(run: SavedRun) -> list[Example] | None:
    """The examples of a run's QA files, whose passages were its database when it was given none; None if moved."""
    from rqa.schema import read_examples

    if not run.qa_files or not all(Path(path).is_file() for path in run.qa_files):
        return None
    return [example for path in run.qa_files for example in read_examples(path)]


def _database_and_index(
    documents: str | None,
    index: str | None,
    run: SavedRun | None,
    run_examples: list[Example] | None,
    examples: list[Example],
) -> tuple[list[Document], str | None]:
    """The documents to retrieve from and their index directory.

    A run given no database retrieved from the passages of its QA files: the same passages reuse its index.
    When those files have moved, the passages of ``--data`` are indexed apart (in memory unless ``--index``),
    never over the run's index.
    """
    from rqa.pipeline import load_database

    if documents is None and run_examples is not None:
        log.info("the run had no document database: retrieving from the passages of its QA files, as it did")
        database = load_database(None, run_examples)
    else:
        database = load_database(documents, examples)
    if index is None and run is not None and (documents is not None or run_examples is not None):
        index = run.index_for(documents)
    return database, index

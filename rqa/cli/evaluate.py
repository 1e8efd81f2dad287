"""``rqa evaluate``: score a saved model end to end (or the retriever alone)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rqa.cli.options import option


def _saved_settings(model: str | None) -> dict:
    """Settings a training run recorded in ``rqa_args.json``, used as defaults."""
    if model and (Path(model) / "rqa_args.json").exists():
        return json.loads((Path(model) / "rqa_args.json").read_text())
    return {}


@click.command("evaluate")
@option("--model", help="Saved model directory or Hub id. Default: the embedded generator.")
@option("--data", required=True, help="QA file (JSONL) to evaluate on.")
@option("--documents", help="Document database (JSONL or LocalRQA .pkl).")
@option("--index", help="Index directory (built on first use, reused when it matches).")
@option("--retriever", help="Retriever name (default: the training run's, else dense-faiss).")
@option("--retriever_option", multiple=True, help="Retriever option KEY=VALUE (repeatable).")
@option("--embedding_model", help="Embedding model for the retriever.")
@option("--formatter", help="Formatter name (default: the training run's, else auto).")
@option("--formatter_option", multiple=True, help="Formatter option KEY=VALUE (repeatable).")
@option("--top_k", type=int, default=4, show_default=True, help="Passages retrieved per question.")
@option("--metrics", multiple=True, default=["all"], show_default=True, help="Metric names, or 'all'.")
@option("--max_new_tokens", type=int, default=128, show_default=True, help="Longest answer, in tokens.")
@option("--max_seq_length", type=int, default=2048, show_default=True, help="Longest prompt, in tokens.")
@option("--batch_size", type=int, default=32, show_default=True, help="Questions generated together.")
@option("--limit", type=int, help="Evaluate the first N questions only.")
@option("--retrieval_only", is_flag=True, help="Score retrieval alone; load no generator.")
@option("--output_dir", required=True, help="Where predictions.jsonl and metrics.json go.")
def evaluate(**kwargs) -> None:
    """Retrieve from the whole database, generate, score, and write predictions and metrics."""
    from rqa.display import make_console, print_scores, setup_logging
    from rqa.errors import RqaError
    from rqa.pipeline import build_retriever, choose, choose_all, load_database, metric_names
    from rqa.schema import read_examples

    console = make_console()
    setup_logging(console)
    saved = _saved_settings(kwargs["model"])
    formatter_name = kwargs["formatter"] or saved.get("resolved_formatter", {}).get("name") or "auto"
    formatter_options = {} if kwargs["formatter"] else saved.get("resolved_formatter", {}).get("options", {})
    retriever_name = kwargs["retriever"] or saved.get("resolved_retriever", {}).get("name") or "dense-faiss"
    embedding_model = kwargs["embedding_model"] or saved.get("eval_embedding_model")
    requested_metrics = list(kwargs["metrics"])
    if kwargs["retrieval_only"]:
        requested_metrics = ["retrieval"]
    checks = {
        "examples": lambda: read_examples(kwargs["data"]),
        "retriever": lambda: choose("retrievers", retriever_name, kwargs["retriever_option"]),
        "metrics": lambda: metric_names(requested_metrics),
    }
    if not kwargs["retrieval_only"]:
        checks["formatter"] = lambda: choose(
            "formatters", formatter_name, kwargs["formatter_option"], **formatter_options
        )
    chosen, problems = choose_all(checks)
    if problems:
        raise RqaError("the configuration has problems:\n  - " + "\n  - ".join(problems))
    examples = chosen["examples"][: kwargs["limit"]] if kwargs["limit"] else chosen["examples"]
    documents = load_database(kwargs["documents"], examples)
    retriever = build_retriever(chosen["retriever"], documents, kwargs["index"], embedding_model=embedding_model)

    from rqa.evaluation import E2EEvaluator, evaluate_retrieval_only
    from rqa.pipeline import metric_factories

    metrics = metric_factories(chosen["metrics"], kwargs["top_k"])
    output_dir = Path(kwargs["output_dir"])
    if kwargs["retrieval_only"]:
        scores = evaluate_retrieval_only(examples, retriever, metrics, kwargs["top_k"], output_dir)
    else:
        from rqa.data import ExampleEncoder
        from rqa.models import load_generator, load_tokenizer, resolve_generator

        model_path = resolve_generator(kwargs["model"])
        tokenizer = load_tokenizer(model_path)
        formatter = chosen["formatter"].build(tokenizer=tokenizer)
        encoder = ExampleEncoder(tokenizer, formatter, max_seq_length=kwargs["max_seq_length"])
        model = load_generator(model_path)
        evaluator = E2EEvaluator(
            examples,
            encoder=encoder,
            retriever=retriever,
            metrics=metrics,
            top_k=kwargs["top_k"],
            max_new_tokens=kwargs["max_new_tokens"],
            batch_size=kwargs["batch_size"],
            output_dir=output_dir,
        )
        scores = evaluator.evaluate_model(model, name="")
    print_scores(console, scores, "evaluation")
    console.print(f"[bold green]Done.[/] Predictions and metrics in {output_dir}")

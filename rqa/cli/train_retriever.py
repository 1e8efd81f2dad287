"""``rqa train-retriever``: flags are parsed by Hugging Face's ``HfArgumentParser`` (all of sentence-transformers'
training arguments, which include every ``TrainingArguments`` flag)."""

from __future__ import annotations

import click

from rqa.cli.options import TRAINING_COMMAND, job_console, print_results, wants_help

WHAT = {
    "model": "the fine-tuned sentence-transformers model: pass this folder as --embedding_model",
    "eval": "step-N-predictions.jsonl and step-N-metrics.json per evaluation (step 0: the base model)",
    "test_predictions": "every test question with its retrieved passages",
    "test_metrics": "the test retrieval metrics, with 95 % intervals",
    "trainer_state": "the training history (log_history: every logged loss and metric)",
    "report": "loss, retrieval metrics per evaluation (step 0: the base model) and the test result",
}


@click.command("train-retriever", **TRAINING_COMMAND)
@click.pass_context
def train_retriever(ctx: click.Context) -> None:
    """Fine-tune the embedding model contrastively on the QA files, evaluating retrieval over the whole database.

    Accepts LocalRQA's CTL flags, rqa's own and every sentence-transformers / Hugging Face training flag; see
    `rqa train-retriever --help`.
    """
    argv = list(ctx.args)
    from rqa.retriever_config import make_parser, parse_retriever_args

    if wants_help(argv, make_parser):
        return
    from rqa.retriever_training import run_retriever_training

    print_results(run_retriever_training(parse_retriever_args(argv), job_console()), WHAT)

"""``rqa train``: flags are parsed by Hugging Face's ``HfArgumentParser`` (all of ``TrainingArguments``)."""

from __future__ import annotations

import click

from rqa.cli.options import TRAINING_COMMAND, job_console, print_results, wants_help

# the closing list of results: what to open first on top, each with what it holds
OPEN_FIRST = ("report", "test_predictions", "eval", "test_metrics", "model", "trainer_state")
WHAT = {
    "report": "the run in one picture: loss, metrics over steps, test result, where answers fail",
    "test_predictions": "every test answer with its retrieved passages and a diagnosis",
    "eval": "step-N-predictions.jsonl and step-N-metrics.json per evaluation (step 0: the base model)",
    "test_metrics": "the test metrics above, with 95 % intervals",
    "model": "the fine-tuned model: pass this folder to rqa evaluate, ask or chat as --model",
    "trainer_state": "the training history (log_history: every logged loss and metric)",
}


@click.command("train", **TRAINING_COMMAND)
@click.pass_context
def train(ctx: click.Context) -> None:
    """Fine-tune a generator on gold passages (SFT), evaluating end to end while it trains.

    Accepts LocalRQA's flags, rqa's own and every Hugging Face TrainingArguments flag; see
    `rqa train --help`.
    """
    argv = list(ctx.args)
    from rqa.config import make_parser, parse_train_args

    if wants_help(argv, make_parser):
        return
    from rqa.training import run_training

    print_results(run_training(parse_train_args(argv), job_console()), WHAT, OPEN_FIRST)

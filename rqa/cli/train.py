"""``rqa train``: flags are parsed by Hugging Face's ``HfArgumentParser`` (all of ``TrainingArguments``)."""

from __future__ import annotations

import click

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


@click.command(
    "train",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.pass_context
def train(ctx: click.Context) -> None:
    """Fine-tune a generator on gold passages (SFT), evaluating end to end while it trains.

    Accepts LocalRQA's flags, rqa's own and every Hugging Face TrainingArguments flag; see
    `rqa train --help`.
    """
    argv = list(ctx.args)
    from rqa.config import make_parser, parse_train_args

    if "-h" in argv or "--help" in argv:
        click.echo(make_parser().format_help())
        return
    from rqa.display import make_console, setup_logging
    from rqa.training import run_training

    console = make_console()
    setup_logging(console)
    args = parse_train_args(argv)
    results = run_training(args, console)
    if results:
        console.print("[bold green]Done.[/] Results:")
        order = {label: rank for rank, label in enumerate(OPEN_FIRST)}
        width = max(len(str(path)) for path in results.values())
        for label, path in sorted(results.items(), key=lambda item: order.get(item[0], len(order))):
            # plain lines: paths must not be wrapped or styled
            click.echo(f"  {label:<17} {path!s:<{width}}  {WHAT.get(label, '')}".rstrip())

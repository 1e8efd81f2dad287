"""``rqa train``: flags are parsed by Hugging Face's ``HfArgumentParser`` (all of ``TrainingArguments``)."""

from __future__ import annotations

import click


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
        for label, path in results.items():  # plain lines: paths must not be wrapped or styled
            click.echo(f"  {label:<17} {path}")

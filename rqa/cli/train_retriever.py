"""``rqa train-retriever``: flags are parsed by Hugging Face's ``HfArgumentParser`` (all of sentence-transformers'
training arguments, which include every ``TrainingArguments`` flag)."""

from __future__ import annotations

import click

WHAT = {
    "model": "the fine-tuned sentence-transformers model: pass this folder as --embedding_model",
    "eval": "step-N-predictions.jsonl and step-N-metrics.json per evaluation (step 0: the base model)",
    "test_predictions": "every test question with its retrieved passages",
    "test_metrics": "the test retrieval metrics, with 95 % intervals",
    "trainer_state": "the training history (log_history: every logged loss and metric)",
    "report": "loss, retrieval metrics per evaluation (step 0: the base model) and the test result",
}


@click.command(
    "train-retriever",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.pass_context
def train_retriever(ctx: click.Context) -> None:
    """Fine-tune the embedding model contrastively on the QA files, evaluating retrieval over the whole database.

    Accepts LocalRQA's CTL flags, rqa's own and every sentence-transformers / Hugging Face training flag; see
    `rqa train-retriever --help`.
    """
    argv = list(ctx.args)
    from rqa.retriever_config import make_parser, parse_retriever_args

    if "-h" in argv or "--help" in argv:
        click.echo(make_parser().format_help())
        return
    from rqa.display import make_console, setup_logging
    from rqa.retriever_training import run_retriever_training

    console = make_console()
    setup_logging(console)
    args = parse_retriever_args(argv)
    results = run_retriever_training(args, console)
    if not results:
        return  # another process than the main one: the main one reports
    click.echo("Done. Results:")
    width = max(len(str(path)) for path in results.values())
    for label, path in results.items():
        click.echo(f"  {label:<17} {path!s:<{width}}  {WHAT.get(label, '')}".rstrip())

"""``rqa generate``: question/answer rows for training and evaluation from a document database."""

from __future__ import annotations

import click

from rqa.cli.options import option

WHAT = {
    "train_w_qa": "training rows: pass as --train_file",
    "eval_w_qa": "evaluation rows: pass as --eval_file",
    "test_w_qa": "test rows: pass as --test_file",
    "summary": "settings, prompts, generator, filter counts and rows/min",
}


@click.command("generate")
@option("--documents", required=True, help="Document database (JSONL or LocalRQA .pkl).")
@option("--output_dir", required=True, help="Where the split files, generation.json and the work log go.")
@option("--questions_per_passage", type=int, default=2, show_default=True, help="Questions asked per gold passage.")
@option("--num_train", type=int, default=600, show_default=True, help="Training rows wanted.")
@option("--num_eval_test", type=int, default=150, show_default=True, help="Evaluation plus test rows (half each).")
@option("--generator", default="hf", show_default=True, help="Generator backend NAME[:key=value,...] (hf: embedded).")
@option("--generator_option", multiple=True, help="Generator option KEY=VALUE (repeatable).")
@option("--question_prompt", type=click.Path(dir_okay=False), help="Question prompt file ({passage}, {num_questions}).")
@option("--answer_prompt", type=click.Path(dir_okay=False), help="Answer prompt file ({passage}, {question}).")
@option(
    "--filter",
    "filters",
    multiple=True,
    help="Extra filter (repeatable, or comma-separated): a passage filter NAME[:key=value,...] (built-ins short, "
    "boilerplate; see rqa list-plugins --kind passage_filters), roundtrip (the retriever must rank the question's "
    "passage in its top --roundtrip_k), or package.module:function (a function of a document: keep it or not).",
)
@option("--seed", type=int, default=0, show_default=True, help="Seed of the passage order.")
@option("--hard_negatives", type=int, default=2, show_default=True, help="Hard negatives mined per gold passage.")
@option("--retriever", default="dense-faiss", show_default=True, help="Retriever for hard negatives and roundtrip.")
@option("--retriever_option", multiple=True, help="Retriever option KEY=VALUE (repeatable).")
@option("--embedding_model", help="Embedding model (default: the retriever's).")
@option("--index", help="Index directory to reuse or build (default: built in memory).")
@option("--roundtrip_k", type=int, default=5, show_default=True, help="--filter roundtrip: gold passage in top K.")
@option("--duplicate_threshold", type=float, default=0.95, show_default=True, help="Embedding cosine of duplicates.")
@option("--max_question_words", type=int, default=40, show_default=True, help="Longer questions are removed.")
@option("--max_answer_words", type=int, default=200, show_default=True, help="Longer answers are removed.")
@option("--question_tokens", type=int, default=128, show_default=True, help="New tokens for the questions reply.")
@option("--answer_tokens", type=int, default=256, show_default=True, help="New tokens for an answer.")
@option("--batch_size", type=int, default=8, show_default=True, help="Passages generated at once.")
@option("--quiet", is_flag=True, help="No progress bar.")
def generate(**kwargs) -> None:
    """Generate question/answer rows from a document database with any generator backend.

    Gold passages are drawn by --seed, questions and answers come from the generator through replaceable
    prompts, filters remove weak rows, and rows are split into train/eval/test by passage. Stopped runs continue
    where they stopped when the same command is run again.
    """
    from rqa.display import make_console, setup_logging
    from rqa.generate.job import run_generate
    from rqa.generate.plan import GenerateSettings

    console = make_console()
    setup_logging(console)
    for key in ("generator_option", "retriever_option"):
        kwargs[key.replace("_option", "_options")] = tuple(kwargs.pop(key))
    kwargs["filters"] = tuple(kwargs["filters"])
    files = run_generate(GenerateSettings(**kwargs), console)
    click.echo("Done. Files:")
    width = max(len(path) for path in files.values())
    for label, path in files.items():
        click.echo(f"  {label:<11} {path:<{width}}  {WHAT.get(label, '')}".rstrip())

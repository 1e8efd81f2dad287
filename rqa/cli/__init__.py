"""The ``rqa`` command line.

Start-up stays light: heavy libraries (torch, transformers) are imported only inside the commands that
need them, so ``rqa --help`` and ``rqa list-plugins`` answer at once.
"""

from __future__ import annotations

import sys

import click

from rqa import __version__
from rqa.cli.options import LazyGroup
from rqa.errors import RqaError

COMMANDS = {
    "train": ("rqa.cli.train:train", "Fine-tune a generator on gold passages, evaluating end to end."),
    "train-retriever": (
        "rqa.cli.train_retriever:train_retriever",
        "Fine-tune the embedding model on the QA files, evaluating retrieval.",
    ),
    "evaluate": ("rqa.cli.evaluate:evaluate", "Evaluate a saved model end to end."),
    "index": ("rqa.cli.index:index", "Build, or check, the retrieval index of a document database."),
    "list-plugins": ("rqa.cli.list_plugins:list_plugins", "List every registered component by kind."),
    "plugin": ("rqa.cli.plugin:plugin", "Start a plugin package: rqa plugin new NAME --kind KIND."),
    "prepare": ("rqa.cli.prepare:prepare", "Chunk raw documents by tokens into a document database."),
    "render": ("rqa.cli.render:render", "Show one example as the model sees it, with token counts."),
    "ask": ("rqa.cli.ask:ask", "Answer one question from the document database."),
    "chat": ("rqa.cli.ask:chat", "Chat over the document database, history included."),
    "serve": ("rqa.cli.serve:serve", "Serve a model over an OpenAI-compatible API with a chat page."),
    "generate": ("rqa.cli.generate:generate", "Generate question/answer rows from a document database."),
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rqa")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """rqa: fine-tune LLMs for retrieval-augmented QA and measure them end to end."""
    ctx.obj = {"debug": debug}


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors are one clear line (``--debug`` for the traceback)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        code = cli.main(args=args, prog_name="rqa", standalone_mode=False)
        if isinstance(code, int) and code:  # click returns, rather than raises, a command's exit code
            sys.exit(code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except RqaError as error:
        if "--debug" in args:
            raise
        click.secho(f"Error: {error}", fg="red", err=True)
        sys.exit(1)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)

"""``rqa ask`` (one question) and ``rqa chat`` (a conversation on stdin) over a document database."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from rqa.cli.options import option


def _assistant_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options ``ask`` and ``chat`` share; unset ones come from the run's ``rqa_args.json``."""
    options = [
        option("--model", help="Trained output directory (its settings are the defaults), model path or Hub id."),
        option("--documents", help="Document database (JSONL or LocalRQA .pkl). Default: the training run's."),
        option(
            "--index",
            help="Index directory (built on first use, reused when it matches). Default: the run's, for its database.",
        ),
        option("--top_k", type=int, help="Passages retrieved per question (default: the run's, else 4)."),
        option("--max_new_tokens", type=int, help="Longest answer, in tokens (default: the run's, else 128)."),
        option("--max_seq_length", type=int, help="Longest prompt, in tokens (default: the run's, else 2048)."),
        option("--formatter", help="Formatter name (default: the run's, else auto)."),
        option("--formatter_option", multiple=True, help="Formatter option KEY=VALUE (repeatable)."),
        option("--retriever", help="Retriever name (default: the run's, else dense-faiss)."),
        option("--retriever_option", multiple=True, help="Retriever option KEY=VALUE (repeatable)."),
        option("--embedding_model", help="Embedding model for the retriever (default: the run's)."),
        option(
            "--generator",
            help="Generator backend: hf (default: the local --model) or e.g. openai:base_url=http://HOST/v1,model=NAME.",
        ),
        option("--show_prompt", is_flag=True, hidden=True, help="Print each prompt as decoded tokens (debugging)."),
    ]
    for decorate in reversed(options):
        command = decorate(command)
    return command


def _load(kwargs: dict[str, Any], console: Any) -> tuple[Any, Any]:
    """The settings (command line over the run's record) and the assistant assembled from them."""
    from rqa.assembly import option_overrides
    from rqa.assistant import Assistant, resolve_settings
    from rqa.display import setup_logging

    setup_logging(console)
    # serve's --batch_size batches requests: not the batch a run's evaluations generated in
    settings = resolve_settings(kwargs["model"], **option_overrides(kwargs, leave_out=("batch_size",)))
    return settings, Assistant.load(settings)


def _print_prompt(console: Any, assistant: Any, reply: Any) -> None:
    console.rule("prompt", style="dim")
    if assistant.encoder is None:  # a remote backend rendered it
        console.print("(the prompt was rendered by the generator backend)", style="dim")
    else:
        console.print(assistant.decode(reply.prompt_ids), markup=False, highlight=False)
    console.rule("end of prompt", style="dim")


def _print_sources(console: Any, reply: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="sources", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("title")
    table.add_column("source", overflow="fold")
    table.add_column("score", justify="right")
    for rank, item in enumerate(reply.to_dict()["sources"], start=1):
        table.add_row(str(rank), Text(str(item["title"])), Text(str(item["source"])), f"{item['score']:.3f}")
    console.print(table)


@click.command("ask")
@click.argument("question")
@_assistant_options
@option("--json", "as_json", is_flag=True, help="Print {question, answer, sources} as JSON (nothing else on stdout).")
def ask(question: str, as_json: bool, **kwargs: Any) -> None:
    """Answer QUESTION from the passages retrieved for it, and show those sources."""
    from rich.console import Console
    from rich.panel import Panel
    from rich.text import Text

    from rqa.display import make_console
    from rqa.errors import RqaError

    if not question.strip():
        raise RqaError("the question is empty")
    console = Console(stderr=True) if as_json else make_console()  # --json keeps stdout for the JSON alone
    _, assistant = _load(kwargs, console)
    reply = assistant.reply(question)
    if kwargs["show_prompt"]:
        _print_prompt(console, assistant, reply)
    if as_json:
        click.echo(json.dumps(reply.to_dict(), ensure_ascii=False, indent=2))
        return
    # Text, not str: a model's answer or a title may hold brackets that rich would read as markup
    console.print(Panel(Text(reply.answer or "(no answer)"), title=Text(question), title_align="left"))
    _print_sources(console, reply)


@click.command("chat")
@_assistant_options
def chat(**kwargs: Any) -> None:
    """Chat on stdin: each answer sees the conversation so far. /reset forgets it, /quit (or EOF) ends."""
    from rqa.assistant import Conversation
    from rqa.display import make_console

    console = make_console()
    conversation = Conversation(_load(kwargs, console)[1])
    console.print("Ask a question; /reset forgets the conversation, /quit ends it.", style="dim")
    stdin = click.get_text_stream("stdin")
    while True:
        click.echo("you> ", nl=False)
        line = stdin.readline()
        if not line:  # EOF
            click.echo()
            break
        question = line.strip()
        if not stdin.isatty():  # piped input: show it, so the transcript reads like a conversation
            click.echo(question)
        if question == "/quit":
            break
        if question == "/reset":
            conversation.reset()
            console.print("(conversation forgotten)", style="dim")
            continue
        if not question:
            continue
        reply = conversation.ask(question)
        if kwargs["show_prompt"]:
            _print_prompt(console, conversation.assistant, reply)
        click.echo(f"rqa> {reply.answer}")
        sources = ", ".join(
            f"{item['title'] or item['source'] or '?'} ({item['score']:.2f})" for item in reply.to_dict()["sources"]
        )
        console.print(f"sources: {sources}", style="dim", markup=False, highlight=False)

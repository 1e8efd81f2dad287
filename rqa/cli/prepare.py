"""``rqa prepare``: raw articles (JSONL or a folder) or a LocalRQA pickle → a JSONL document database."""

from __future__ import annotations

from typing import Any

import click

from rqa.cli.options import option


@click.command("prepare")
@option("--input", "input_path", help="Articles: a JSONL of {text, title, source}, or a folder of .md/.txt/.html.")
@option("--from_pickle", help="Convert a LocalRQA documents.pkl instead (no chunking).")
@option("--output", "-o", required=True, help="Where the document database (JSONL) goes.")
@option("--chunk_size", type=int, default=400, show_default=True, help="Longest chunk, in tokens.")
@option("--chunk_overlap", type=int, default=50, show_default=True, help="Tokens shared by neighbouring chunks.")
@option("--tokenizer", help="Tokenizer name or path that measures chunks. Default: the embedded generator's.")
def prepare(**kwargs: Any) -> None:
    """Chunk raw documents by tokens into rqa's document database (or convert a LocalRQA pickle)."""
    from rqa.display import make_console, setup_logging
    from rqa.errors import RqaError

    console = make_console()
    setup_logging(console)
    if bool(kwargs["input_path"]) == bool(kwargs["from_pickle"]):
        raise RqaError("give exactly one of --input (articles to chunk) and --from_pickle (a LocalRQA pickle)")
    if str(kwargs["input_path"] or "").endswith((".pkl", ".pickle")):
        raise RqaError(f"{kwargs['input_path']} is a pickle: convert it with --from_pickle")
    if kwargs["from_pickle"]:
        _convert_pickle(console, kwargs)
    else:
        _chunk(console, kwargs)


def _load_tokenizer(name: str | None) -> Any:
    from rqa.models import load_tokenizer, resolve_generator

    return load_tokenizer(resolve_generator(name))


def _convert_pickle(console: Any, kwargs: dict[str, Any]) -> None:
    from rqa.files import write_jsonl_atomic
    from rqa.schema import read_documents

    documents = read_documents(kwargs["from_pickle"])  # the restricted unpickler: a hostile pickle runs nothing
    write_jsonl_atomic(kwargs["output"], (d.to_dict() for d in documents))
    tokenizer = _load_tokenizer(kwargs["tokenizer"])
    lengths = [len(tokenizer(d.page_content, add_special_tokens=False)["input_ids"]) for d in documents]
    _summary(console, "LocalRQA pickle converted", documents=len(documents), chunks=len(documents), lengths=lengths)
    console.print(f"[bold green]Done.[/] {len(documents)} documents in {kwargs['output']}")


def _chunk(console: Any, kwargs: dict[str, Any]) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from rqa.errors import RqaError
    from rqa.files import write_jsonl_atomic
    from rqa.prepare import Chunker, check_sizes, chunk_articles, read_articles

    check_sizes(kwargs["chunk_size"], kwargs["chunk_overlap"])
    articles = read_articles(kwargs["input_path"])  # every line checked before the tokenizer loads
    chunker = Chunker(_load_tokenizer(kwargs["tokenizer"]), kwargs["chunk_size"], kwargs["chunk_overlap"])
    columns = (TextColumn("chunking"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("chunking", total=len(articles))
        result = chunk_articles(articles, chunker, advance=lambda: progress.advance(task))
    if not result.documents:
        raise RqaError(f"{kwargs['input_path']}: no text to chunk")
    write_jsonl_atomic(kwargs["output"], (d.to_dict() for d in result.documents))
    _summary(
        console,
        f"chunks of ≤ {kwargs['chunk_size']} tokens, overlap ≈ {kwargs['chunk_overlap']}",
        documents=result.articles,
        chunks=len(result.documents),
        lengths=result.token_lengths,
        extra={"articles without text": result.empty_articles, "duplicate chunks dropped": result.duplicates},
    )
    console.print(f"[bold green]Done.[/] {len(result.documents)} chunks in {kwargs['output']}")


def _summary(
    console: Any, title: str, documents: int, chunks: int, lengths: list[int], extra: dict[str, int] | None = None
) -> None:
    from rich.table import Table

    from rqa.prepare import percentile

    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    rows = {
        "documents": documents,
        "chunks": chunks,
        "tokens p50": percentile(lengths, 50),
        "tokens p90": percentile(lengths, 90),
        "tokens max": max(lengths, default=0),
    }
    for key, value in {**rows, **{k: v for k, v in (extra or {}).items() if v}}.items():
        table.add_row(key, str(value))
    console.print(table)

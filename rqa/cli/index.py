"""``rqa index``: build or check the index of a document database."""

from __future__ import annotations

import click

from rqa.cli.options import option


@click.command("index")
@option("--documents", required=True, help="Document database (JSONL or LocalRQA .pkl).")
@option("--index", required=True, help="Index directory.")
@option("--retriever", default="dense-faiss", show_default=True, help="Retriever name.")
@option("--retriever_option", multiple=True, help="Retriever option KEY=VALUE (repeatable).")
@option("--embedding_model", help="Embedding model (default: the retriever's).")
@option("--check", is_flag=True, help="Only check that the index matches; never build (exit 1 if not).")
@option("--rebuild", is_flag=True, help="Build even when a matching index exists.")
def index(**kwargs) -> None:
    """Build the index of a document database, reuse it when it matches, or check it with --check."""
    from rqa.display import make_console, setup_logging
    from rqa.pipeline import build_retriever, choose
    from rqa.schema import read_documents

    console = make_console()
    setup_logging(console)
    choice = choose("retrievers", kwargs["retriever"], kwargs["retriever_option"])
    documents = read_documents(kwargs["documents"])
    rebuild = "never" if kwargs["check"] else "always" if kwargs["rebuild"] else "auto"
    build_retriever(choice, documents, kwargs["index"], rebuild=rebuild, embedding_model=kwargs["embedding_model"])
    console.print(f"[bold green]Index ready[/] at {kwargs['index']} ({len(documents)} documents)")

"""Built-in retrievers: sentence-transformers embeddings in a faiss inner-product index."""

from __future__ import annotations

from rqa.hookspecs import hookimpl
from rqa.models import DEFAULT_EMBEDDER


def dense_faiss(
    embedding_model: str | None = None,
    batch_size: int = 64,
    device: str | None = None,
    embed_urls: bool | None = None,
):
    """Dense embeddings (all-MiniLM-L6-v2 embedded by default) searched in faiss.

    ``embed_urls=false`` embeds passages without their URLs (default: as the model folder records, else with them).
    """
    from rqa.retrieval import DenseFaissRetriever

    return DenseFaissRetriever(
        "dense-faiss",
        embedding_model or DEFAULT_EMBEDDER,
        batch_size=batch_size,
        device=device,
        embed_urls=embed_urls,
    )


def e5_faiss(
    embedding_model: str | None = None,
    batch_size: int = 64,
    device: str | None = None,
    embed_urls: bool | None = None,
):
    """E5 embeddings with 'query: ' / 'passage: ' prefixes (intfloat/e5-base-v2 by default) in faiss."""
    from rqa.retrieval import DenseFaissRetriever

    return DenseFaissRetriever(
        "e5-faiss",
        embedding_model or "intfloat/e5-base-v2",
        query_prefix="query: ",
        passage_prefix="passage: ",
        batch_size=batch_size,
        device=device,
        embed_urls=embed_urls,
    )


@hookimpl
def register_retrievers(register) -> None:
    register("dense-faiss", dense_faiss)
    register("e5-faiss", e5_faiss)

"""Built-in retrievers: sentence-transformers embeddings in a faiss inner-product index, and fusions of retrievers."""

from __future__ import annotations

from typing import Any

from rqa.hookspecs import hookimpl
from rqa.models import DEFAULT_EMBEDDER


def dense_faiss(
    embedding_model: str | None = None,
    batch_size: int = 64,
    device: str | None = None,
    embed_urls: bool | None = None,
    windows: bool | None = None,
    encoder: Any = None,
):
    """Dense embeddings (all-MiniLM-L6-v2 embedded by default) searched in faiss.

    ``embed_urls=false`` embeds passages without their URLs (default: as the model folder records, else with them).
    ``windows=true`` embeds a passage longer than the embedder reads as overlapping windows, scored by the best
    (default: as the model folder records, else off: the embedder reads each passage's beginning).
    ``encoder`` (given by a command, not a user): ``embedding_model`` already loaded, used as it is.
    """
    from rqa.retrieval import DenseFaissRetriever

    return DenseFaissRetriever(
        "dense-faiss",
        embedding_model or DEFAULT_EMBEDDER,
        batch_size=batch_size,
        device=device,
        embed_urls=embed_urls,
        windows=windows,
        encoder=encoder,
    )


def e5_faiss(
    embedding_model: str | None = None,
    batch_size: int = 64,
    device: str | None = None,
    embed_urls: bool | None = None,
    windows: bool | None = None,
    encoder: Any = None,
):
    """E5 embeddings with 'query: ' / 'passage: ' prefixes (intfloat/e5-base-v2 by default) in faiss; options as
    dense-faiss's."""
    from rqa.retrieval import DenseFaissRetriever

    return DenseFaissRetriever(
        "e5-faiss",
        embedding_model or "intfloat/e5-base-v2",
        query_prefix="query: ",
        passage_prefix="passage: ",
        batch_size=batch_size,
        device=device,
        embed_urls=embed_urls,
        windows=windows,
        encoder=encoder,
    )


def hybrid(
    embedding_model: str | None = None,
    members: str = "dense-faiss+bm25",
    weights: str = "",
    rank_constant: float = 60.0,
    depth: int = 50,
    embed_urls: bool | None = None,
    windows: bool | None = None,
    encoder: Any = None,
):
    """Several retrievers fused by reciprocal rank: dense embeddings and BM25 (rqa-bm25) by default.

    ``members``: registered retriever names joined by ``+``, each with its defaults (``--embedding_model``, and the
    loaded ``encoder`` a command may give, go to those that take one); ``weights``: one per member, joined the same
    way (default 1 each); ``rank_constant``: RRF's k; ``depth``: how many passages each member ranks;
    ``embed_urls``, ``windows``: passed to the members that take them. ``+``, not a comma: commas separate a
    spec's options (``--retriever hybrid:depth=20,weights=1+0.5``).
    """
    from rqa.fusion import HybridRetriever
    from rqa.plugins import get_plugins

    names = [name.strip() for name in members.split("+") if name.strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"members names a retriever twice: {members!r}")
    if "hybrid" in names:
        raise ValueError("a hybrid retriever cannot be its own member")
    try:
        scales = [float(weight) for weight in weights.split("+")] if weights.strip() else [1.0] * len(names)
    except ValueError:
        raise ValueError(f"weights must be numbers joined by '+', one per member, got {weights!r}") from None
    registry = get_plugins()["retrievers"]
    context: dict[str, Any] = {"embedding_model": embedding_model} if embedding_model else {}
    if encoder is not None:
        context["encoder"] = encoder
    shared = {key: value for key, value in (("embed_urls", embed_urls), ("windows", windows)) if value is not None}
    built = {name: registry.build(name, registry.accepted(name, shared), **context) for name in names}
    return HybridRetriever(built, scales, rank_constant=rank_constant, depth=depth)


@hookimpl
def register_retrievers(register) -> None:
    register("dense-faiss", dense_faiss)
    register("e5-faiss", e5_faiss)
    register("hybrid", hybrid)

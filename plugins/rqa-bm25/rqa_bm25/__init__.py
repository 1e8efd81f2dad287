"""rqa plugin: a sparse BM25 retriever (bm25s), found by rqa through the ``rqa`` entry-point group.

This module is imported by every ``rqa`` command that lists or builds components, so it stays tiny:
bm25s and the retriever class load only when the factory is called.
"""

from __future__ import annotations

from typing import Any

from rqa.hookspecs import Register, hookimpl

__all__ = ["bm25", "register_retrievers"]

METHODS = ("robertson", "lucene", "atire", "bm25l", "bm25+")


# Returns a BM25Retriever, annotated Any: rqa converts "--retriever_option k1=1.2" using
# typing.get_type_hints(bm25), which must resolve every annotation without importing the retriever module.
def bm25(k1: float = 1.5, b: float = 0.75, method: str = "lucene") -> Any:
    """Sparse BM25 over lower-cased words minus English stopwords (bm25s); no model to download.

    ``k1`` sets term-frequency saturation, ``b`` length normalisation, ``method`` the BM25 variant.
    Bad values raise ValueError, which rqa reports as an option error before any index is built.
    """
    if k1 < 0:
        raise ValueError(f"k1 must be >= 0, got {k1}")
    if not 0 <= b <= 1:
        raise ValueError(f"b must be between 0 and 1, got {b}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    from rqa_bm25.retriever import BM25Retriever

    return BM25Retriever(k1=k1, b=b, method=method)


@hookimpl
def register_retrievers(register: Register) -> None:
    register("bm25", bm25)

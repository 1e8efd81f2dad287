"""BM25 retrieval with bm25s, on rqa's ``IndexedRetriever``: rqa owns the index directory's manifest,
reuse and atomic build; this module says how to index, save and load bm25s files.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from rqa.errors import RqaError
from rqa.indexing import IndexedRetriever
from rqa.retrieval import Hit
from rqa.schema import Document, fingerprint_documents

PARAMS_FILE = "params.index.json"  # written by bm25s.BM25.save; its absence means no bm25s index
# Part of the manifest: changing how text becomes tokens must invalidate old indexes.
TOKENIZER = {"lower": True, "stopwords": "english"}


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


class BM25Retriever(IndexedRetriever):
    """Lexical retrieval: strong on exact names and rare terms, needs no embedding model or GPU."""

    name = "bm25"
    index_files = (PARAMS_FILE,)

    def __init__(self, k1: float = 1.5, b: float = 0.75, method: str = "lucene") -> None:
        super().__init__()
        self.k1, self.b, self.method = float(k1), float(b), method
        self.model: Any = None

    def tokenize(self, texts: Sequence[str], progress: bool = False) -> list[list[str]]:
        """Documents and queries go through this one function, so their tokens always agree."""
        import bm25s

        return bm25s.tokenize(
            list(texts),
            lower=TOKENIZER["lower"],
            stopwords=TOKENIZER["stopwords"],
            return_ids=False,
            show_progress=progress,
        )

    def manifest(self, documents: Sequence[Document]) -> dict[str, Any]:
        return {
            "retriever": self.name,
            "k1": self.k1,
            "b": self.b,
            "method": self.method,
            "tokenizer": TOKENIZER,
            "num_documents": len(documents),
            "fingerprint": fingerprint_documents(list(documents)),
            "bm25s_version": _version("bm25s"),
        }

    def index(self, documents: Sequence[Document], progress: bool) -> None:
        import bm25s

        self.model = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        self.model.index(self.tokenize([d.text for d in documents], progress=progress), show_progress=progress)

    def save(self, directory: Path) -> None:
        self.model.save(str(directory), show_progress=False)

    def load(self, directory: Path, expected: dict[str, Any]) -> str | None:
        import bm25s

        model = bm25s.BM25.load(str(directory), show_progress=False)
        # the manifest could be right while the files beside it are not (copied or half replaced by hand)
        saved = (model.scores.get("num_docs"), float(model.k1), float(model.b), model.method)
        wanted = (expected["num_documents"], self.k1, self.b, self.method)
        if saved != wanted:
            return f"its index files (documents, k1, b, method = {saved}) disagree with the manifest"
        self.model = model
        return None

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """Top ``k`` documents per query, best first; a query of only stopwords gets zero scores."""
        if self.model is None:
            raise RqaError("the retriever has no index: call build() first")
        k = min(k, len(self.documents))
        if not queries or k <= 0:
            return [[] for _ in queries]
        ids, scores = self.model.retrieve(self.tokenize(queries), k=k, show_progress=False)
        return [
            [(self.documents[int(i)], float(s)) for i, s in zip(row_ids, row_scores, strict=True)]
            for row_ids, row_scores in zip(ids, scores, strict=True)
        ]

"""BM25 retrieval with bm25s, behind the same interface as rqa's ``DenseFaissRetriever``.

The index directory holds the bm25s files plus ``manifest.json`` (retriever, BM25 parameters, tokenizer,
document count, content fingerprint). It is reused only when the manifest matches and the saved index
loads with the same parameters, and it is written to a temporary directory renamed into place, so a crash
never leaves a half index that a later run trusts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from rqa.errors import RqaError
from rqa.retrieval import Hit, IndexMismatchError, Rebuild
from rqa.schema import Document, fingerprint_documents

log = logging.getLogger("rqa")
MANIFEST = "manifest.json"
PARAMS_FILE = "params.index.json"  # written by bm25s.BM25.save; its absence means no bm25s index
# Part of the manifest: changing how text becomes tokens must invalidate old indexes.
TOKENIZER = {"lower": True, "stopwords": "english"}


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


class BM25Retriever:
    """Lexical retrieval: strong on exact names and rare terms, needs no embedding model or GPU."""

    name = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75, method: str = "lucene") -> None:
        self.k1, self.b, self.method = float(k1), float(b), method
        self.model: Any = None
        self.documents: list[Document] = []

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
        }

    def build(
        self,
        documents: Sequence[Document],
        index_dir: str | Path | None = None,
        rebuild: Rebuild = "auto",
        progress: bool = False,
    ) -> bool:
        """Load a matching index from ``index_dir`` or build one; returns True when it was built."""
        import bm25s

        self.documents = list(documents)
        if not self.documents:
            raise RqaError("the bm25 retriever needs at least one document to index")
        expected = self.manifest(self.documents)
        if index_dir is not None and rebuild != "always":
            model, problem = self._load(Path(index_dir), expected)
            if model is not None:
                self.model = model
                return False
            if rebuild == "never":
                raise IndexMismatchError(f"index {index_dir} cannot be reused: {problem}")
            if Path(index_dir).exists():
                log.info("rebuilding index %s: %s", index_dir, problem)
        model = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        tokens = self.tokenize([d.text for d in self.documents], progress=progress)
        model.index(tokens, show_progress=progress)
        self.model = model
        if index_dir is not None:
            manifest = {
                **expected,
                "rqa_version": _version("rqa"),
                "rqa_bm25_version": _version("rqa-bm25"),
                "bm25s_version": _version("bm25s"),
            }

            def write(target: Path) -> None:
                model.save(str(target), show_progress=False)
                (target / MANIFEST).write_text(json.dumps(manifest, indent=2))

            _write_atomically(Path(index_dir), write)
        return True

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

    def _load(self, index_dir: Path, expected: dict[str, Any]) -> tuple[Any, str | None]:
        """(the saved model, None) when ``index_dir`` is usable for ``expected``; else (None, why not)."""
        manifest_path = index_dir / MANIFEST
        if not manifest_path.exists() or not (index_dir / PARAMS_FILE).exists():
            return None, "no index there yet"
        try:
            found = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None, "its manifest is unreadable"
        if not isinstance(found, dict):
            return None, "its manifest is unreadable"
        changed = [key for key, value in expected.items() if found.get(key) != value]
        if changed:
            return None, "it was built for a different " + ", ".join(changed)
        try:
            import bm25s

            model = bm25s.BM25.load(str(index_dir), show_progress=False)
        except Exception:
            return None, "its index files are truncated or corrupt"
        # the manifest could be right while the files beside it are not (copied or half replaced by hand)
        saved = (model.scores.get("num_docs"), float(model.k1), float(model.b), model.method)
        wanted = (expected["num_documents"], self.k1, self.b, self.method)
        if saved != wanted:
            return None, f"its index files (documents, k1, b, method = {saved}) disagree with the manifest"
        return model, None


def _write_atomically(index_dir: Path, write: Callable[[Path], None]) -> None:
    """Fill a temporary sibling directory with ``write``, then rename it to ``index_dir``.

    An existing ``index_dir`` is moved aside first (a directory cannot be replaced in one rename) and
    deleted only after the new one is in place.
    """
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.building-", dir=index_dir.parent))
    try:
        write(staging)
        if index_dir.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.old-", dir=index_dir.parent))
            os.replace(index_dir, retired / "index")
            os.replace(staging, index_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, index_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

"""Dense retrieval over a document database with a faiss inner-product index.

The index directory is owned by the retriever: ``index.faiss`` plus ``manifest.json`` (retriever, embedding
model, prefixes, normalisation, document count, content fingerprint). It is reused only when the manifest
matches, and built in a temporary directory that is renamed into place, so a crash never leaves a half
index that a later run trusts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from rqa import __version__
from rqa.errors import RqaError
from rqa.schema import Document, fingerprint_documents

log = logging.getLogger("rqa")
Rebuild = Literal["auto", "always", "never"]
MANIFEST, INDEX_FILE = "manifest.json", "index.faiss"
Hit = tuple[Document, float]


class IndexMismatchError(RqaError):
    """The index on disk was built for another database or embedder, and rebuilding is not allowed."""


class DenseFaissRetriever:
    """Sentence-transformers embeddings, normalised, searched by inner product in faiss."""

    def __init__(
        self,
        name: str,
        embedding_model: str,
        query_prefix: str = "",
        passage_prefix: str = "",
        batch_size: int = 64,
        normalize: bool = True,
        device: str | None = None,
    ) -> None:
        self.name, self.embedding_model = name, embedding_model
        self.query_prefix, self.passage_prefix = query_prefix, passage_prefix
        self.batch_size, self.normalize, self.device = batch_size, normalize, device
        self._encoder: Any = None
        self.index: Any = None
        self.documents: list[Document] = []

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from sentence_transformers import SentenceTransformer

            from rqa.models import resolve_embedder

            self._encoder = SentenceTransformer(resolve_embedder(self.embedding_model), device=self.device)
        return self._encoder

    def encode(self, texts: Sequence[str], progress: bool = False) -> Any:
        import numpy as np

        vectors = self.encoder.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def manifest(self, documents: Sequence[Document]) -> dict[str, Any]:
        return {
            "retriever": self.name,
            "embedding_model": self.embedding_model,
            "query_prefix": self.query_prefix,
            "passage_prefix": self.passage_prefix,
            "normalize": self.normalize,
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
        import faiss

        self.documents = list(documents)
        expected = self.manifest(self.documents)
        if index_dir is not None and rebuild != "always":
            problem = _check_index(Path(index_dir), expected)
            if problem is None:
                self.index = faiss.read_index(str(Path(index_dir) / INDEX_FILE))
                return False
            if rebuild == "never":
                raise IndexMismatchError(f"index {index_dir} cannot be reused: {problem}")
            if Path(index_dir).exists():
                log.info("rebuilding index %s: %s", index_dir, problem)
        if not self.documents:
            raise RqaError("cannot index an empty document database")
        vectors = self.encode([self.passage_prefix + d.text for d in self.documents], progress=progress)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        self.index = index
        if index_dir is not None:
            _write_index_atomically(Path(index_dir), index, {**expected, "rqa_version": __version__})
        return True

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        if self.index is None:
            raise RqaError("the retriever has no index: call build() first")
        vectors = self.encode([self.query_prefix + q for q in queries])
        scores, ids = self.index.search(vectors, min(k, len(self.documents)))
        return [
            [(self.documents[i], float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            for row_ids, row_scores in zip(ids, scores, strict=True)
        ]


def _check_index(index_dir: Path, expected: dict[str, Any]) -> str | None:
    """None when ``index_dir`` holds a usable index for ``expected``; otherwise why not."""
    manifest_path, index_path = index_dir / MANIFEST, index_dir / INDEX_FILE
    if not manifest_path.exists() or not index_path.exists():
        return "no index there yet"
    try:
        found = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return "its manifest is unreadable"
    if not isinstance(found, dict):
        return "its manifest is unreadable"
    changed = [key for key, value in expected.items() if found.get(key) != value]
    if changed:
        return "it was built for a different " + ", ".join(changed)
    try:
        import faiss

        index = faiss.read_index(str(index_path))
    except Exception:
        return "its index file is truncated or corrupt"
    if index.ntotal != expected["num_documents"]:
        return f"it holds {index.ntotal} vectors for {expected['num_documents']} documents"
    return None


def _write_index_atomically(index_dir: Path, index: Any, manifest: dict[str, Any]) -> None:
    import faiss

    index_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in index_dir.parent.glob(f".{index_dir.name}.old-*"):  # left by a crash mid-swap; never trusted
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.building-", dir=index_dir.parent))
    try:
        faiss.write_index(index, str(staging / INDEX_FILE))
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if index_dir.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.old-", dir=index_dir.parent))
            os.replace(index_dir, retired / "index")
            os.replace(staging, index_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, index_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

"""Dense retrieval: sentence-transformers embeddings, normalised, in a faiss inner-product index.

The index directory (``index.faiss`` plus the manifest: embedding model by name and by content, prefixes,
normalisation, document count, content fingerprint) follows ``rqa.indexing``: reused only when it matches,
built atomically.

What the embedder reads of a passage is its text (``fmt_content``), or that text without its URLs
(``embed_urls=False``): to an embedding model a URL is an opaque string of ids, and every chunk of an article
carries the same source URL. A passage longer than the embedder reads is either cut where the embedder stops or,
with ``windows``, embedded as overlapping windows scored by their best (``rqa.passage_windows``; the index then
maps each window to its passage). A model folder written by ``rqa train-retriever`` records both choices
(``rqa_retriever.json``), and every retriever built with it reads passages the same way.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rqa.errors import RqaError
from rqa.fingerprint import model_fingerprint
from rqa.indexing import MANIFEST, IndexedRetriever, IndexMismatchError, Rebuild
from rqa.schema import Document, fingerprint_documents

__all__ = ["INDEX_FILE", "MANIFEST", "DenseFaissRetriever", "Hit", "IndexMismatchError", "Rebuild"]
INDEX_FILE = "index.faiss"
MODEL_SETTINGS = "rqa_retriever.json"  # in a model folder: how the model reads passages
Hit = tuple[Document, float]
log = logging.getLogger("rqa")
_URL = re.compile(r"https?://\S+")


def passage_text(document: Document, embed_urls: bool = True) -> str:
    """What an embedder reads of ``document``: its text, with its URLs left out unless ``embed_urls``."""
    return readable(document.text, embed_urls)


def readable(text: str, embed_urls: bool = True) -> str:
    """``text`` as an embedder reads it: with its URLs left out unless ``embed_urls``."""
    return text if embed_urls else _URL.sub("", text)


def recorded_setting(model_path: str, key: str) -> bool | None:
    """How a model folder says it reads passages (``rqa train-retriever`` records ``embed_urls`` and ``windows``);
    None if it does not say."""
    settings = Path(model_path) / MODEL_SETTINGS
    if not settings.is_file():
        return None
    try:
        value = json.loads(settings.read_text()).get(key)
    except (OSError, ValueError, AttributeError) as error:
        raise RqaError(f"{settings}: not a JSON object of rqa retriever settings ({error})") from None
    if value is not None and not isinstance(value, bool):
        raise RqaError(f"{settings}: '{key}' must be true or false, got {value!r}")
    return value


def settle_embed_urls(model_path: str, asked: bool | None = None) -> bool:
    """``asked``, else what the model folder records, else true: passages are embedded as they are given."""
    if asked is not None:
        return asked
    recorded = recorded_setting(model_path, "embed_urls")
    return True if recorded is None else recorded


def settle_windows(model_path: str, asked: bool | None = None, default: bool = False) -> bool:
    """``asked``, else what the model folder records, else ``default`` (a retriever's: off, so a passage is read as
    far as the embedder reads)."""
    if asked is not None:
        return asked
    recorded = recorded_setting(model_path, "windows")
    return default if recorded is None else recorded


def record_reading(model_dir: Path, embed_urls: bool, windows: bool) -> None:
    """Record in a saved model folder how it reads passages, so that every index built with it reads them alike."""
    settings = {"embed_urls": embed_urls, "windows": windows}
    (model_dir / MODEL_SETTINGS).write_text(json.dumps(settings) + "\n")


class DenseFaissRetriever(IndexedRetriever):
    """Sentence-transformers embeddings, normalised, searched by inner product in faiss."""

    index_files = (INDEX_FILE,)

    def __init__(
        self,
        name: str,
        embedding_model: str,
        query_prefix: str = "",
        passage_prefix: str = "",
        batch_size: int = 64,
        normalize: bool = True,
        device: str | None = None,
        encoder: Any = None,
        embed_urls: bool | None = None,
        windows: bool | None = None,
    ) -> None:
        """``encoder``: an already loaded SentenceTransformer used as it is (``rqa train-retriever`` evaluates the
        model it is training this way, indexing in memory with ``index``); else ``embedding_model`` is loaded.
        ``embed_urls``: whether passages are embedded with their URLs; ``windows``: whether a passage longer than
        the embedder reads is embedded as overlapping windows (``rqa.passage_windows``); None: as the model folder
        records, else with URLs and without windows."""
        super().__init__()
        self._embed_urls, self._windows = embed_urls, windows
        self.name, self.embedding_model = name, embedding_model
        self.query_prefix, self.passage_prefix = query_prefix, passage_prefix
        self.batch_size, self.normalize, self.device = batch_size, normalize, device
        self._encoder: Any = encoder
        self.faiss_index: Any = None
        self._windows_per_passage = 1  # the most windows one passage has in the index: how deep a search goes
        self._loaded_fingerprint: str | None = None  # the model the loaded index's vectors came from

    @classmethod
    def in_memory(
        cls,
        encoder: Any,
        documents: Sequence[Document],
        progress: bool = False,
        embed_urls: bool = True,
        windows: bool = False,
    ) -> DenseFaissRetriever:
        """An index of ``documents`` held in memory, made with an already loaded model (one in training): no
        folder and no manifest, so nothing identifies the model by its files."""
        retriever = cls("dense-faiss", "model in training", encoder=encoder, embed_urls=embed_urls, windows=windows)
        retriever.documents = list(documents)
        retriever.index(retriever.documents, progress=progress)
        return retriever

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from sentence_transformers import SentenceTransformer

            from rqa.models import resolve_embedder

            self._encoder = SentenceTransformer(resolve_embedder(self.embedding_model), device=self.device)
            # a reused index was checked before the model loaded: say so if the model changed in between
            now = self.model_fingerprint() if self._loaded_fingerprint is not None else None
            if now is not None and now != self._loaded_fingerprint:
                log.warning(
                    "the embedding model %s changed after its index was checked (%s, now %s): queries may not "
                    "match the documents' vectors until the index is rebuilt, which the next run does",
                    self.embedding_model,
                    self._loaded_fingerprint,
                    now,
                )
        return self._encoder

    @property
    def embed_urls(self) -> bool:
        if self._embed_urls is None:
            from rqa.models import resolve_embedder

            self._embed_urls = settle_embed_urls(resolve_embedder(self.embedding_model))
        return self._embed_urls

    @property
    def windows(self) -> bool:
        if self._windows is None:
            from rqa.models import resolve_embedder

            self._windows = settle_windows(resolve_embedder(self.embedding_model))
        return self._windows

    def model_fingerprint(self) -> str:
        """The embedding model by content: its files' hash, or a Hub id's commit (see ``model_fingerprint``)."""
        from rqa.models import resolve_embedder

        return model_fingerprint(resolve_embedder(self.embedding_model))

    def encode(self, texts: Sequence[str], progress: bool = False, unit: str = "documents") -> Any:
        """Normalised vectors; ``progress``: encode in chunks, show them on a bar and log one line at the end.

        The bar follows ``rqa.progress`` (a terminal, the main process, not quiet); the chunks do not, so the
        vectors are the same whether a bar is drawn or not.
        """
        import numpy as np

        texts = list(texts)
        if not progress:
            return np.ascontiguousarray(self._encode(texts), dtype=np.float32)
        from rqa.progress import is_main_process, log_finished, progress_bars

        step = self.batch_size * 8  # large chunks keep the encoder's own batching efficient
        parts = []
        began = time.perf_counter()
        with progress_bars() as bars:
            advance = bars.add(f"embedding {unit}", len(texts), unit)
            for start in range(0, len(texts), step):
                parts.append(self._encode(texts[start : start + step]))
                advance(len(parts[-1]))
        if is_main_process():
            log_finished("index", len(texts), unit, "embedded", time.perf_counter() - began)
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)

    def _encode(self, texts: list[str]) -> Any:
        return self.encoder.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    def manifest(self, documents: Sequence[Document]) -> dict[str, Any]:
        return {
            "retriever": self.name,
            "embedding_model": self.embedding_model,
            "embedding_model_fingerprint": self.model_fingerprint(),
            "query_prefix": self.query_prefix,
            "passage_prefix": self.passage_prefix,
            "normalize": self.normalize,
            "embed_urls": self.embed_urls,
            "windows": self.windows,
            "num_documents": len(documents),
            "fingerprint": fingerprint_documents(list(documents)),
        }

    def settle_manifest(self, expected: dict[str, Any]) -> dict[str, Any]:
        """A Hub model downloaded while indexing now has a commit: record it, or the next run rebuilds."""
        fingerprint = str(expected.get("embedding_model_fingerprint", ""))
        if fingerprint.startswith("hub:") and "@" not in fingerprint:
            return {**expected, "embedding_model_fingerprint": self.model_fingerprint()}
        return expected

    def index(self, documents: Sequence[Document], progress: bool) -> None:
        import faiss

        self._loaded_fingerprint = None  # the vectors about to be made are checked by the manifest itself
        texts = [self.passage_prefix + passage_text(d, self.embed_urls) for d in documents]
        if not self.windows:
            vectors = self.encode(texts, progress=progress)
            self.faiss_index = faiss.IndexFlatIP(vectors.shape[1])
            self.faiss_index.add(vectors)
            return
        import numpy as np

        from rqa.passage_windows import window_texts

        contents = [readable(d.page_content, self.embed_urls) for d in documents]
        size = self.encoder.max_seq_length or self.encoder.tokenizer.model_max_length
        windows, owners = window_texts(texts, contents, self.encoder.tokenizer, size)
        vectors = self.encode(windows, progress=progress, unit="passage windows")
        self.faiss_index = faiss.IndexIDMap(faiss.IndexFlatIP(vectors.shape[1]))  # each window's id: its passage
        self.faiss_index.add_with_ids(vectors, np.asarray(owners, dtype=np.int64))
        self._windows_per_passage = int(np.bincount(owners).max()) if owners else 1

    def save(self, directory: Path) -> None:
        import faiss

        faiss.write_index(self.faiss_index, str(directory / INDEX_FILE))

    def load(self, directory: Path, expected: dict[str, Any]) -> str | None:
        import faiss

        index = faiss.read_index(str(directory / INDEX_FILE))
        count = expected["num_documents"]
        if not self.windows:
            if index.ntotal != count:
                return f"it holds {index.ntotal} vectors for {count} documents"
        else:
            import numpy as np

            owners = faiss.vector_to_array(index.id_map) if hasattr(index, "id_map") else np.empty(0, np.int64)
            windows = np.bincount(owners, minlength=count) if owners.size and owners.min() >= 0 else np.empty(0)
            if windows.size != count or not windows.all():
                return f"its windows do not cover the {count} documents one to one"
            self._windows_per_passage = int(windows.max())
        self.faiss_index = index
        self._loaded_fingerprint = expected.get("embedding_model_fingerprint")
        return None

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        if self.faiss_index is None:
            raise RqaError("the retriever has no index: call build() first")
        from rqa.passage_windows import best_per_passage

        vectors = self.encode([self.query_prefix + q for q in queries])
        k = min(k, len(self.documents))
        # deep enough that k distinct passages are found even when every hit above them is another window
        depth = min(k * self._windows_per_passage, self.faiss_index.ntotal)
        scores, ids = self.faiss_index.search(vectors, depth)
        return [
            [(self.documents[i], s) for i, s in best_per_passage(row_ids, row_scores, k)]
            for row_ids, row_scores in zip(ids, scores, strict=True)
        ]
